"""Every error code the server can return carries details that Python's
``rpc_status.from_call`` (grpcio-status) decodes: a google.rpc.Status whose code and
message agree with the call's, with one google.rpc.ErrorInfo (AIP-193: an
UPPER_SNAKE_CASE reason, the called service as domain), a google.rpc.RequestInfo
naming the call's ``x-request-id``, and the detail that fits the code (BadRequest,
ResourceInfo, PreconditionFailure, RetryInfo).

Each test provokes its code the way a client can, against the shared server. The
codes that need a broken or stopping server (UNAVAILABLE, and INTERNAL from a
database failure) are the ``test_outage_*`` tests: ``tests/interop.rs`` runs them
against a server of their own, whose database it breaks and which it drains, and sets
ORDERS_OUTAGE_ORDER_ID for them; the run of the whole suite against the shared
server skips them, saying so.
"""

from __future__ import annotations

import os
import re
import threading
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from orders.v1 import orders_pb2 as pb  # isort: skip

Code = grpc.StatusCode
DOMAIN = "orders.v1.OrderService"
TIMEOUT = 10.0

# Every detail type the server sends; anything else in a Status fails the test.
DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.RetryInfo,
)


# --- decoding ----------------------------------------------------------------


class Rich:
    """The google.rpc.Status of a failed call, decoded with grpcio-status."""

    def __init__(self, error: grpc.RpcError):
        self.error = error
        # from_call also checks that the Status agrees with grpc-status and
        # grpc-message (it raises ValueError otherwise).
        status = rpc_status.from_call(error)
        assert status is not None, f"{error.code().name} ({error.details()!r}) carries no google.rpc.Status"
        assert isinstance(status, status_pb2.Status)
        assert status.code == error.code().value[0]
        self.status = status
        self.details: dict[type, list] = {t: [] for t in DETAIL_TYPES}
        for detail in status.details:
            kind = next((t for t in DETAIL_TYPES if detail.Is(t.DESCRIPTOR)), None)
            assert kind is not None, f"unexpected detail {detail.type_url}"
            message = kind()
            detail.Unpack(message)
            self.details[kind].append(message)

    def one(self, kind):
        found = self.details[kind]
        assert len(found) == 1, f"{self.error.code().name}: {len(found)} {kind.DESCRIPTOR.name}, expected one"
        return found[0]

    def none(self, kind) -> None:
        assert not self.details[kind], f"{self.error.code().name} has a {kind.DESCRIPTOR.name}"

    @property
    def info(self) -> error_details_pb2.ErrorInfo:
        return self.one(error_details_pb2.ErrorInfo)


def request_id_of(error: grpc.RpcError) -> str | None:
    """The x-request-id the server echoed (in the headers, or for a trailers-only
    answer in the trailers, which grpcio reports as trailing metadata)."""
    for metadata in (error.initial_metadata() or (), error.trailing_metadata() or ()):
        for key, value in metadata:
            if key == "x-request-id":
                return value
    return None


def rich(error: grpc.RpcError, code: grpc.StatusCode, reason: str, domain: str = DOMAIN) -> Rich:
    """Checks what every error carries and returns its details for the specific ones."""
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    status = Rich(error)
    info = status.info
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*[A-Z0-9]", info.reason), f"reason {info.reason!r} is not UPPER_SNAKE_CASE"
    assert info.reason == reason, f"{code.name}: reason {info.reason}, expected {reason}"
    assert info.domain == domain
    request_info = status.one(error_details_pb2.RequestInfo)
    assert request_info.request_id, "RequestInfo without a request id"
    echoed = request_id_of(error)
    assert echoed is None or echoed == request_info.request_id, (echoed, request_info.request_id)
    return status


def failure(fn, *args, **kwargs) -> grpc.RpcError:
    """Calls fn (reading a response stream to its end), which must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        result = fn(*args, **kwargs)
        if isinstance(result, grpc.Call):
            list(result)
    return caught.value


# --- test data -----------------------------------------------------------------


def new_sku() -> str:
    return f"SKU-{uuid.uuid4().hex[:12].upper()}"


def register_request(**fields) -> pb.RegisterOrderRequest:
    values = {
        "items": [pb.LineItem(sku=new_sku(), quantity=1, unit_price_cents=100)],
        "address": pb.Address(street="Main Street", number=1, city="Springfield", postal_code="12345"),
    }
    return pb.RegisterOrderRequest(**{**values, **fields})


@pytest.fixture
def order(alice) -> pb.Order:
    """A fresh PENDING order of alice's (version 1)."""
    return alice.RegisterOrder(register_request()).order


# --- the codes a client provokes ----------------------------------------------------


def test_invalid_argument_has_bad_request(alice):
    error = failure(alice.RegisterOrder, register_request(items=[]))
    status = rich(error, Code.INVALID_ARGUMENT, "INVALID_REQUEST")
    bad_request = status.one(error_details_pb2.BadRequest)
    assert [v.field for v in bad_request.field_violations] == ["items"]


def test_unauthenticated_has_error_info_and_never_the_token(anonymous, alice):
    error = failure(anonymous.GetOrder, pb.GetOrderRequest(order_id=str(uuid.uuid4())))
    rich(error, Code.UNAUTHENTICATED, "MISSING_TOKEN")
    token = "not.a." + "token" * 50
    error = failure(
        alice.GetOrder,
        pb.GetOrderRequest(order_id=str(uuid.uuid4())),
        metadata=(("authorization", f"Bearer {token}"),),
    )
    status = rich(error, Code.UNAUTHENTICATED, "MALFORMED_TOKEN")
    assert token not in str(status.status)


def test_permission_denied_names_the_missing_scope(alice_readonly):
    error = failure(alice_readonly.RegisterOrder, register_request())
    status = rich(error, Code.PERMISSION_DENIED, "MISSING_SCOPE")
    assert status.info.metadata["required_scope"] == "orders:write"


def test_not_found_has_resource_info_without_a_hint(alice, bob, order):
    absent = str(uuid.uuid4())
    statuses = []
    for client, order_id in ((alice, absent), (bob, order.id)):
        error = failure(client.GetOrder, pb.GetOrderRequest(order_id=order_id))
        status = rich(error, Code.NOT_FOUND, "ORDER_NOT_FOUND")
        resource = status.one(error_details_pb2.ResourceInfo)
        assert resource.resource_name == order_id
        assert resource.owner == ""
        statuses.append((error.details(), status.info, resource.resource_type, resource.description))
    # An absent order and another customer's read the same.
    assert statuses[0] == statuses[1]


def test_not_found_does_not_echo_a_huge_id(alice):
    # Just under GetOrder's request limit (4 KiB).
    huge = "x" * 4000
    error = failure(alice.GetOrder, pb.GetOrderRequest(order_id=huge))
    status = rich(error, Code.NOT_FOUND, "ORDER_NOT_FOUND")
    name = status.one(error_details_pb2.ResourceInfo).resource_name
    assert huge.startswith(name.rstrip("…")) and len(name) <= 65, len(name)
    assert len(status.status.SerializeToString()) < 1024


def test_already_exists_when_a_request_id_is_reused(alice):
    request_id = str(uuid.uuid4())
    alice.RegisterOrder(register_request(request_id=request_id))
    error = failure(alice.RegisterOrder, register_request(request_id=request_id))
    rich(error, Code.ALREADY_EXISTS, "REQUEST_ID_REUSED")


def test_failed_precondition_has_precondition_failure(alice, order):
    alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))
    error = failure(alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id))
    status = rich(error, Code.FAILED_PRECONDITION, "STATUS_FORBIDS_ACTION")
    assert status.info.metadata["status"] == "ORDER_STATUS_CANCELLED"
    (violation,) = status.one(error_details_pb2.PreconditionFailure).violations
    assert violation.type == "STATUS"
    assert violation.subject == f"orders/{order.id}"


def test_aborted_has_precondition_failure_and_the_versions(alice, order):
    error = failure(alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id, expected_version=42))
    status = rich(error, Code.ABORTED, "VERSION_MISMATCH")
    assert status.info.metadata["expected_version"] == "42"
    assert status.info.metadata["current_version"] == "1"
    (violation,) = status.one(error_details_pb2.PreconditionFailure).violations
    assert violation.type == "VERSION"
    assert violation.subject == f"orders/{order.id}"


def test_out_of_range_when_watching_from_a_future_version(alice, order):
    error = failure(alice.WatchOrder, pb.WatchOrderRequest(order_id=order.id, after_version=99))
    rich(error, Code.OUT_OF_RANGE, "OUT_OF_RANGE")


def test_deadline_exceeded_is_the_servers_answer(alice, order):
    # The server ends the call a little before the client's own deadline (even
    # though grpcio rounds the grpc-timeout it sends up), so its trailers, with
    # details, arrive first; a deadline grpcio raised itself has none. A busy
    # machine can delay those trailers past the client's deadline: a few
    # attempts, of which one must be the server's answer.
    lost = []
    for _ in range(5):
        error = failure(alice.WatchOrder, pb.WatchOrderRequest(order_id=order.id), timeout=1.0)
        assert error.code() == Code.DEADLINE_EXCEEDED, error.details()
        try:
            from_server = rpc_status.from_call(error) is not None
        except ValueError:
            # grpcio's own deadline fired as the server's trailers came in: it
            # then reports their grpc-message still percent-encoded.
            assert "%20" in error.details(), error.details()
            from_server = False
        if from_server:
            status = rich(error, Code.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
            status.none(error_details_pb2.RetryInfo)
            return
        lost.append(error.details())
    pytest.fail(f"no DEADLINE_EXCEEDED came from the server in 5 attempts: {lost}")


def test_resource_exhausted_for_a_message_over_the_limit_names_it_and_gives_no_retry(alice):
    # Over any sensible server.max_message_bytes (4 MiB by default); the
    # server says its limit, which the message must be over.
    street = "x" * (8 * 1024 * 1024)
    error = failure(alice.RegisterOrder, register_request(address=pb.Address(street=street)))
    status = rich(error, Code.RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE")
    assert int(status.info.metadata["max_message_bytes"]) < len(street)
    # Sending it again fails again: no RetryInfo invites a retry.
    status.none(error_details_pb2.RetryInfo)


@pytest.mark.parametrize(
    ("path", "domain"),
    [
        # A method the service does not have: the service answers.
        ("/orders.v1.OrderService/NoSuchMethod", DOMAIN),
        # A service the server does not have: the domain is the one called.
        ("/orders.v1.NoSuchService/Get", "orders.v1.NoSuchService"),
    ],
)
def test_unimplemented_has_error_info(channel, alice, path, domain):
    call = channel.unary_unary(path)
    error = failure(call, b"", metadata=alice.caller.metadata, timeout=TIMEOUT)
    rich(error, Code.UNIMPLEMENTED, "UNIMPLEMENTED", domain=domain)


def test_internal_for_an_undecodable_message_has_error_info(channel, alice):
    # Field 1 as a varint whose bytes never end: no protobuf decoder accepts it.
    call = channel.unary_unary("/orders.v1.OrderService/GetOrder")
    error = failure(call, b"\x08\xff\xff\xff\xff\xff\xff", metadata=alice.caller.metadata, timeout=TIMEOUT)
    status = rich(error, Code.INTERNAL, "INTERNAL")
    assert not status.info.metadata


# --- the codes of a broken or stopping server (run by tests/interop.rs) ------------

OUTAGE_ORDER_ID = os.environ.get("ORDERS_OUTAGE_ORDER_ID", "")
outage = pytest.mark.skipif(
    not OUTAGE_ORDER_ID,
    reason="needs a server with a broken database that drains: "
    "tests/interop.rs::python_decodes_the_details_of_internal_and_unavailable runs it",
)


@outage
def test_outage_internal_from_a_database_failure_is_opaque(alice):
    # The table every new order is written to was dropped behind the server's back.
    error = failure(alice.RegisterOrder, register_request())
    status = rich(error, Code.INTERNAL, "INTERNAL")
    assert error.details() == "internal error"
    assert not status.info.metadata
    assert "order_versions" not in str(status.status)


@outage
def test_outage_unavailable_when_the_servers_stream_limit_ends_a_stream(alice):
    # The server's cap (server.max_timeout_ms, below this deadline) ends the stream.
    error = failure(alice.WatchOrder, pb.WatchOrderRequest(order_id=OUTAGE_ORDER_ID), timeout=30.0)
    status = rich(error, Code.UNAVAILABLE, "STREAM_TIME_LIMIT")
    limit = status.info.metadata["max_timeout_ms"]
    assert f"server.max_timeout_ms = {limit} ms" in error.details()
    assert status.one(error_details_pb2.RetryInfo).HasField("retry_delay")


@outage
def test_outage_unavailable_when_the_server_drains(alice):
    # No deadline, so only the drain can end the stream; tests/interop.rs
    # drains the server once it sees this TrackOrders open. A bound all the same.
    release = threading.Event()

    def requests():
        yield pb.TrackOrdersRequest(subscribe=OUTAGE_ORDER_ID)
        release.wait(60)

    call = alice.TrackOrders(requests(), timeout=None)
    guard = threading.Timer(60, call.cancel)
    guard.start()
    try:
        error = failure(lambda: call)
    finally:
        guard.cancel()
        release.set()
    status = rich(error, Code.UNAVAILABLE, "SERVER_SHUTTING_DOWN")
    retry = status.one(error_details_pb2.RetryInfo)
    assert retry.HasField("retry_delay")
