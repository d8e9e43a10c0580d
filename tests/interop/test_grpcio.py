"""The orders service seen from Python grpcio: every method, the rich errors
(grpcio-status), auth, health and reflection, against the real Rust server.

Tests share one server and run in any order, so each registers its own fresh orders
(with unique SKUs) and asserts only about those. Every call has a deadline (see
conftest.Client) and every wait on a stream has a timeout: nothing can hang.
"""

from __future__ import annotations

import base64
import gzip
import json
import queue
import threading
import uuid

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from orders.v1 import orders_pb2 as pb  # isort: skip

# Seconds to wait for one stream message (calls have their own deadlines).
WAIT = 10.0

Code = grpc.StatusCode
PENDING = pb.ORDER_STATUS_PENDING
SHIPPED = pb.ORDER_STATUS_SHIPPED
CANCELLED = pb.ORDER_STATUS_CANCELLED


# --- test data ---------------------------------------------------------------


def new_sku() -> str:
    """A SKU no other test uses, so an order can be told apart in listings."""
    return f"SKU-{uuid.uuid4().hex[:12].upper()}"


def line_items() -> list[pb.LineItem]:
    return [
        pb.LineItem(sku=new_sku(), quantity=2, unit_price_cents=1250),
        pb.LineItem(sku=new_sku(), quantity=3, unit_price_cents=199),
    ]


LINE_ITEMS_TOTAL = 2 * 1250 + 3 * 199


def address(n: int = 1, **fields) -> pb.Address:
    values = {"street": "Main Street", "number": n, "city": "Springfield", "postal_code": f"{n:05d}"}
    return pb.Address(**{**values, **fields})


def register_request(**fields) -> pb.RegisterOrderRequest:
    values = {"items": line_items(), "address": address()}
    return pb.RegisterOrderRequest(**{**values, **fields})


def register(client, **fields) -> pb.Order:
    """Registers a fresh order for the client's caller and returns it."""
    return client.RegisterOrder(register_request(**fields)).order


def status_name(status: int) -> str:
    return pb.OrderStatus.Name(status)


# --- errors ------------------------------------------------------------------


def expect_error(code: grpc.StatusCode, fn, *args, **kwargs) -> grpc.RpcError:
    """Calls fn, which must fail with `code`; returns the error for further checks."""

    def call():
        result = fn(*args, **kwargs)
        if isinstance(result, grpc.Call):  # a response stream fails when read
            list(result)

    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    return error


def error_details(error: grpc.RpcError, message_type):
    """The details of type `message_type` in the error's google.rpc.Status
    (trailer grpc-status-details-bin), read with grpcio-status."""
    # from_call also checks that the Status agrees with grpc-status/grpc-message.
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code().name} carries no google.rpc.Status details"
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def bad_request_paths(error: grpc.RpcError) -> list[str]:
    """The field paths of the error's single google.rpc.BadRequest, sorted."""
    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    (bad_request,) = error_details(error, error_details_pb2.BadRequest)
    for violation in bad_request.field_violations:
        assert violation.description, f"violation of {violation.field} has no description"
    return sorted(v.field for v in bad_request.field_violations)


def assert_missing_scope(error: grpc.RpcError, scope: str) -> None:
    assert error.code() == Code.PERMISSION_DENIED, error.details()
    (info,) = error_details(error, error_details_pb2.ErrorInfo)
    assert info.reason == "MISSING_SCOPE"
    assert info.metadata["required_scope"] == scope


def assert_precondition_failure(error: grpc.RpcError) -> None:
    assert error.code() == Code.FAILED_PRECONDITION, error.details()
    (failure,) = error_details(error, error_details_pb2.PreconditionFailure)
    assert failure.violations, "PreconditionFailure without violations"


# --- streams -----------------------------------------------------------------


class RequestStream:
    """A request iterator fed by the test: send() queues a message, close() half-closes."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()

    def send(self, message) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self):
        while (message := self._queue.get()) is not None:
            yield message


class StreamReader:
    """Reads a response stream on a thread, so the test can drive changes meanwhile
    and wait for each message with a timeout. Use as a context manager: leaving it
    cancels the call (and half-closes `requests`) if the test ended early."""

    _END = object()

    def __init__(self, call, requests: RequestStream | None = None):
        self.call = call
        self.requests = requests
        self.error: grpc.RpcError | None = None
        self._messages: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self._messages.put(message)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self._messages.put(self._END)

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc) -> None:
        if self.requests is not None:
            self.requests.close()
        self.call.cancel()
        self._thread.join(WAIT)

    def next(self) -> pb.OrderEvent:
        """The next message; fails if none comes within WAIT or the stream ended."""
        try:
            message = self._messages.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"no stream message within {WAIT} s")
        if message is self._END:
            pytest.fail(f"stream ended early: {self._ending()}")
        return message

    def rest(self) -> list:
        """The messages left until the stream ends, which it must do with OK within WAIT."""
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), f"stream still open after {WAIT} s"
        assert self.error is None, f"stream failed: {self._ending()}"
        assert self.call.code() == Code.OK
        messages = []
        while (message := self._messages.get_nowait()) is not self._END:
            messages.append(message)
        return messages

    def failure(self) -> grpc.RpcError:
        """The error the stream must end with, within WAIT, having sent nothing."""
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), f"stream still open after {WAIT} s"
        assert self.error is not None, "the stream ended with OK"
        assert self._messages.get_nowait() is self._END, "the stream sent messages"
        return self.error

    def _ending(self) -> str:
        if self.error is None:
            return "OK"
        return f"{self.error.code().name}: {self.error.details()}"


def event_summary(events) -> list[tuple[str, int, str]]:
    """(order id, version, status) of each event: readable in assertion diffs."""
    return [(e.order.id, e.order.version, status_name(e.order.status)) for e in events]


# --- RegisterOrder -----------------------------------------------------------


def test_register_creates_pending_order(alice):
    request = register_request()
    response = alice.RegisterOrder(request)
    order = response.order
    assert response.order_id
    assert response.order_id == order.id
    assert order.customer_id == alice.caller.subject
    assert order.status == PENDING
    assert order.version == 1
    assert order.total_cents == LINE_ITEMS_TOTAL
    assert list(order.items) == list(request.items)
    assert order.address == request.address
    assert order.HasField("create_time")
    assert order.HasField("update_time")
    assert order.create_time.ToNanoseconds() > 0


def test_register_with_request_id_is_idempotent_per_caller(alice, bob):
    request = register_request(request_id=str(uuid.uuid4()))
    first = alice.RegisterOrder(request)
    again = alice.RegisterOrder(request)
    assert again.order_id == first.order_id
    assert again.order == first.order
    # Never a second order: exactly one of alice's orders has these SKUs.
    sku = request.items[0].sku
    assert [o.id for o in list_all(alice) if o.items[0].sku == sku] == [first.order_id]
    # The request id belongs to alice: bob's identical request is his own new order.
    bobs = bob.RegisterOrder(request)
    assert bobs.order_id != first.order_id
    assert bobs.order.customer_id == bob.caller.subject


def test_register_same_request_id_other_payload_is_already_exists(alice):
    request_id = str(uuid.uuid4())
    alice.RegisterOrder(register_request(request_id=request_id))
    expect_error(Code.ALREADY_EXISTS, alice.RegisterOrder, register_request(request_id=request_id))


def test_register_accepts_values_at_the_limits(alice):
    widest = register(
        alice,
        items=[pb.LineItem(sku="Z9-" + "A" * 61, quantity=1000, unit_price_cents=10_000_000)]
        + [pb.LineItem(sku=new_sku(), quantity=1, unit_price_cents=0) for _ in range(99)],
        address=pb.Address(street="S" * 200, number=1_000_000, city="C" * 200, postal_code="AB-12 34CD-56 78"),
    )
    assert len(widest.items) == 100
    assert widest.total_cents == 1000 * 10_000_000
    narrowest = register(
        alice,
        items=[pb.LineItem(sku="A", quantity=1, unit_price_cents=0)],
        address=pb.Address(street="S", number=1, city="C", postal_code="1"),
    )
    assert narrowest.total_cents == 0


def test_text_limits_count_characters_not_bytes(alice):
    # 200 characters, 400 and 600 bytes of UTF-8: within "1 to 200 characters".
    moved = address(street="ü" * 200, city="東" * 200)
    order = register(alice, address=moved)
    assert order.address == moved


# --- validation: google.rpc.BadRequest ---------------------------------------


def test_all_field_violations_are_reported_together(alice):
    request = pb.RegisterOrderRequest(
        items=[
            pb.LineItem(sku="lower-case", quantity=0, unit_price_cents=-1),
            pb.LineItem(sku=new_sku(), quantity=1, unit_price_cents=100),  # valid
            pb.LineItem(sku="", quantity=1001, unit_price_cents=10_000_001),
            pb.LineItem(sku="A" * 65, quantity=1, unit_price_cents=0),
        ],
        address=pb.Address(street="", number=1_000_001, city="x" * 201, postal_code="12345!"),
    )
    error = expect_error(Code.INVALID_ARGUMENT, alice.RegisterOrder, request)
    # One violation per field, all in one error.
    assert bad_request_paths(error) == sorted(
        [
            "items[0].sku",
            "items[0].quantity",
            "items[0].unit_price_cents",
            "items[2].sku",
            "items[2].quantity",
            "items[2].unit_price_cents",
            "items[3].sku",
            "address.street",
            "address.number",
            "address.city",
            "address.postal_code",
        ]
    )


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("items[0].sku", "AB C"),
        ("items[0].sku", "ÄB"),
        ("items[0].quantity", -1),
        ("items[0].unit_price_cents", -1),
        ("address.number", -1),
        ("address.number", 0),
        ("address.postal_code", ""),
        ("address.postal_code", "1" * 17),
        ("address.postal_code", "12_34"),
        ("address.street", "x" * 201),
        ("address.city", ""),
    ],
)
def test_one_invalid_field(alice, path, value):
    request = register_request()
    parent, field = path.rsplit(".", 1)
    setattr(request.items[0] if parent == "items[0]" else request.address, field, value)
    error = expect_error(Code.INVALID_ARGUMENT, alice.RegisterOrder, request)
    assert bad_request_paths(error) == [path]


def test_no_items_and_no_address(alice):
    error = expect_error(Code.INVALID_ARGUMENT, alice.RegisterOrder, pb.RegisterOrderRequest())
    assert bad_request_paths(error) == ["address", "items"]


def test_too_many_items(alice):
    items = [pb.LineItem(sku=new_sku(), quantity=1, unit_price_cents=1) for _ in range(101)]
    error = expect_error(Code.INVALID_ARGUMENT, alice.RegisterOrder, register_request(items=items))
    assert bad_request_paths(error) == ["items"]


# --- GetOrder ----------------------------------------------------------------


def test_get_returns_the_registered_order(alice):
    order = register(alice)
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)) == order


@pytest.mark.parametrize(
    "order_id",
    [str(uuid.uuid4()), "0190f5c4-7e1a-7b3c-8d2e-1f2a3b4c5d6e", "not-an-id", "x" * 300, "'; DROP TABLE orders; --"],
)
def test_get_unknown_or_malformed_id_is_not_found(alice, order_id):
    expect_error(Code.NOT_FOUND, alice.GetOrder, pb.GetOrderRequest(order_id=order_id))


def test_other_customers_order_is_not_found_but_staff_sees_it(alice, bob, staff):
    order = register(alice)
    foreign = expect_error(Code.NOT_FOUND, bob.GetOrder, pb.GetOrderRequest(order_id=order.id))
    # No hint that the order exists: the same answer as for an id nobody has.
    unknown_id = str(uuid.uuid4())
    unknown = expect_error(Code.NOT_FOUND, bob.GetOrder, pb.GetOrderRequest(order_id=unknown_id))
    assert foreign.details().replace(order.id, "<id>") == unknown.details().replace(unknown_id, "<id>")
    assert staff.GetOrder(pb.GetOrderRequest(order_id=order.id)) == order


# --- ListOrders --------------------------------------------------------------


def list_pages(client, page_size: int, status: int = 0) -> list[list[pb.Order]]:
    """Every page of the caller's orders, following next_page_token to the end."""
    pages, token = [], ""
    for _ in range(10_000):  # a bound, in case the token never empties
        response = client.ListOrders(pb.ListOrdersRequest(page_size=page_size, page_token=token, status=status))
        assert len(response.orders) <= page_size
        pages.append(list(response.orders))
        token = response.next_page_token
        if not token:
            return pages
    pytest.fail("ListOrders never returned an empty next_page_token")


def list_all(client, status: int = 0) -> list[pb.Order]:
    return [order for page in list_pages(client, 500, status) for order in page]


def test_list_paginates_over_pages_newest_last(alice):
    mine = [register(alice).id for _ in range(5)]
    pages = list_pages(alice, page_size=2)
    assert len(pages) >= 3
    ids = [order.id for page in pages for order in page]
    assert len(ids) == len(set(ids)), "an order was listed twice"
    assert [i for i in ids if i in mine] == mine, "not all listed, or not oldest first"
    assert {order.customer_id for page in pages for order in page} == {alice.caller.subject}


def test_list_page_size_above_500_is_clamped(alice):
    response = alice.ListOrders(pb.ListOrdersRequest(page_size=100_000))
    assert len(response.orders) <= 500


def test_list_filters_by_status(alice):
    pending = register(alice)
    cancelled = alice.CancelOrder(pb.CancelOrderRequest(order_id=register(alice).id))
    for status, present, absent in [(PENDING, pending, cancelled), (CANCELLED, cancelled, pending)]:
        listed = list_all(alice, status)
        assert {o.status for o in listed} == {status}
        ids = {o.id for o in listed}
        assert present.id in ids
        assert absent.id not in ids


def test_list_shows_customers_only_their_own_orders(alice, bob, staff):
    alices, bobs = register(alice), register(bob)
    listed_by_bob = list_all(bob)
    assert bobs.id in {o.id for o in listed_by_bob}
    assert alices.id not in {o.id for o in listed_by_bob}
    assert {o.customer_id for o in listed_by_bob} == {bob.caller.subject}
    # Staff see every customer's orders.
    listed_by_staff = {o.id for o in list_all(staff)}
    assert {alices.id, bobs.id} <= listed_by_staff


@pytest.mark.parametrize("token", ["garbage", "MTA=", base64.b64encode(b'{"offset": 0}').decode(), "x" * 1000])
def test_list_rejects_forged_page_token(alice, token):
    expect_error(Code.INVALID_ARGUMENT, alice.ListOrders, pb.ListOrdersRequest(page_size=2, page_token=token))


# --- CancelOrder / AdvanceOrder ----------------------------------------------


def test_cancel_pending_order(alice):
    order = register(alice)
    cancelled = alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))
    assert (cancelled.status, cancelled.version) == (CANCELLED, 2)
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)) == cancelled
    error = expect_error(Code.FAILED_PRECONDITION, alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id))
    assert_precondition_failure(error)


def test_cancel_confirmed_order(alice, staff):
    order = register(alice)
    staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))
    cancelled = alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))
    assert (cancelled.status, cancelled.version) == (CANCELLED, 3)


def test_other_customer_cannot_cancel(alice, bob):
    order = register(alice)
    expect_error(Code.NOT_FOUND, bob.CancelOrder, pb.CancelOrderRequest(order_id=order.id))
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)) == order


def test_advance_through_lifecycle_to_delivered(alice, staff):
    order = register(alice)
    steps = []
    for _ in range(3):
        advanced = staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))
        steps.append((status_name(advanced.status), advanced.version))
        if advanced.status == SHIPPED:
            error = expect_error(Code.FAILED_PRECONDITION, alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id))
            assert_precondition_failure(error)
    assert steps == [("ORDER_STATUS_CONFIRMED", 2), ("ORDER_STATUS_SHIPPED", 3), ("ORDER_STATUS_DELIVERED", 4)]
    assert advanced.customer_id == alice.caller.subject
    error = expect_error(Code.FAILED_PRECONDITION, staff.AdvanceOrder, pb.AdvanceOrderRequest(order_id=order.id))
    assert_precondition_failure(error)
    expect_error(Code.FAILED_PRECONDITION, alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id))
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)).version == 4


def test_advance_needs_admin_scope(alice):
    order = register(alice)
    error = expect_error(Code.PERMISSION_DENIED, alice.AdvanceOrder, pb.AdvanceOrderRequest(order_id=order.id))
    assert_missing_scope(error, "orders:admin")


def test_expected_version_mismatch_is_aborted(alice, staff):
    order = register(alice)
    expect_error(Code.ABORTED, staff.AdvanceOrder, pb.AdvanceOrderRequest(order_id=order.id, expected_version=2))
    expect_error(Code.ABORTED, alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id, expected_version=7))
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)).version == 1  # nothing changed
    advanced = staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id, expected_version=1))
    assert advanced.version == 2
    # A stale version, as a client holding the version-1 copy would send.
    expect_error(Code.ABORTED, alice.CancelOrder, pb.CancelOrderRequest(order_id=order.id, expected_version=1))
    cancelled = alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id, expected_version=2))
    assert (cancelled.status, cancelled.version) == (CANCELLED, 3)


# --- UpdateOrder (client streaming) ------------------------------------------


def test_update_order_applies_every_address_as_a_version(alice):
    order = register(alice)
    moves = [address(n) for n in (11, 12, 13)]
    response = alice.UpdateOrder(iter([pb.UpdateOrderRequest(order_id=order.id, address=a) for a in moves]))
    assert response.updates_applied == 3
    assert response.order.version == order.version + 3
    assert response.order.address == moves[-1]
    assert response.order.status == PENDING
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)) == response.order


def test_update_order_with_mixed_order_ids_changes_nothing(alice):
    first, second = register(alice), register(alice)
    requests = [
        pb.UpdateOrderRequest(order_id=first.id, address=address(21)),
        pb.UpdateOrderRequest(order_id=second.id, address=address(22)),
    ]
    expect_error(Code.INVALID_ARGUMENT, alice.UpdateOrder, iter(requests))
    assert alice.GetOrder(pb.GetOrderRequest(order_id=first.id)) == first
    assert alice.GetOrder(pb.GetOrderRequest(order_id=second.id)) == second


def test_update_after_shipped_is_failed_precondition(alice, staff):
    order = register(alice)
    for _ in range(2):  # CONFIRMED, SHIPPED
        shipped = staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))
    assert shipped.status == SHIPPED
    requests = [pb.UpdateOrderRequest(order_id=order.id, address=address(31))]
    expect_error(Code.FAILED_PRECONDITION, alice.UpdateOrder, iter(requests))
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)) == shipped


# --- WatchOrder (server streaming) -------------------------------------------


def test_watch_streams_every_version_until_delivered(alice, staff):
    order = register(alice)
    with StreamReader(alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))) as watch:
        # The current order comes first; only then is the watch surely in place.
        assert watch.next().order == order
        staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))  # 2 CONFIRMED
        moves = [address(41), address(42)]
        alice.UpdateOrder(iter([pb.UpdateOrderRequest(order_id=order.id, address=a) for a in moves]))  # 3, 4
        staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))  # 5 SHIPPED
        staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))  # 6 DELIVERED
        events = [watch.next() for _ in range(5)]
        assert watch.rest() == [], "events after DELIVERED"
    assert event_summary(events) == [
        (order.id, 2, "ORDER_STATUS_CONFIRMED"),
        (order.id, 3, "ORDER_STATUS_CONFIRMED"),
        (order.id, 4, "ORDER_STATUS_CONFIRMED"),
        (order.id, 5, "ORDER_STATUS_SHIPPED"),
        (order.id, 6, "ORDER_STATUS_DELIVERED"),
    ]
    # Each address update is its own step.
    assert [e.order.address for e in events[1:3]] == moves


def test_watch_ends_when_cancelled(alice, staff):
    order = register(alice)
    with StreamReader(alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))) as watch:
        assert watch.next().order == order
        staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))
        staff.CancelOrder(pb.CancelOrderRequest(order_id=order.id))
        events = [watch.next(), watch.next()]
        assert watch.rest() == [], "events after CANCELLED"
    assert event_summary(events) == [
        (order.id, 2, "ORDER_STATUS_CONFIRMED"),
        (order.id, 3, "ORDER_STATUS_CANCELLED"),
    ]


def test_watch_of_a_finished_order_sends_it_and_ends(alice):
    order = register(alice)
    cancelled = alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))
    with StreamReader(alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))) as watch:
        assert watch.next().order == cancelled
        assert watch.rest() == []


def test_watch_resumes_after_version(alice, staff):
    order = register(alice)  # 1
    staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))  # 2
    alice.UpdateOrder(iter([pb.UpdateOrderRequest(order_id=order.id, address=address(51))]))  # 3
    # A client that saw version 1 reconnects: it gets 2 and 3, then what follows.
    request = pb.WatchOrderRequest(order_id=order.id, after_version=1)
    with StreamReader(alice.WatchOrder(request)) as watch:
        caught_up = [watch.next(), watch.next()]
        alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))  # 4
        events = caught_up + [watch.next()]
        assert watch.rest() == []
    assert event_summary(events) == [
        (order.id, 2, "ORDER_STATUS_CONFIRMED"),
        (order.id, 3, "ORDER_STATUS_CONFIRMED"),
        (order.id, 4, "ORDER_STATUS_CANCELLED"),
    ]
    assert events[1].order.address == address(51)


def test_watch_other_customers_order_is_not_found(alice, bob):
    order = register(alice)
    expect_error(Code.NOT_FOUND, bob.WatchOrder, pb.WatchOrderRequest(order_id=order.id))


# --- TrackOrders (bidirectional) ---------------------------------------------


def test_track_orders_subscribe_change_unsubscribe(alice, staff):
    a, b, c = register(alice), register(alice), register(alice)
    requests = RequestStream()
    with StreamReader(alice.TrackOrders(iter(requests)), requests) as track:
        requests.send(pb.TrackOrdersRequest(subscribe=a.id))
        assert track.next().order == a
        requests.send(pb.TrackOrdersRequest(subscribe=b.id))
        assert track.next().order == b

        staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=a.id))
        assert event_summary([track.next()]) == [(a.id, 2, "ORDER_STATUS_CONFIRMED")]
        alice.UpdateOrder(iter([pb.UpdateOrderRequest(order_id=b.id, address=address(71))]))
        event = track.next()
        assert event_summary([event]) == [(b.id, 2, "ORDER_STATUS_PENDING")]
        assert event.order.address == address(71)

        requests.send(pb.TrackOrdersRequest(unsubscribe=b.id))
        # Requests are handled in order, so once c's current order arrives the
        # unsubscribe is in effect and b's next change must not show up.
        requests.send(pb.TrackOrdersRequest(subscribe=c.id))
        assert track.next().order == c
        staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=b.id))

        # Finish: a reaches a final status, c is dropped, the client half-closes.
        alice.CancelOrder(pb.CancelOrderRequest(order_id=a.id))
        assert event_summary([track.next()]) == [(a.id, 3, "ORDER_STATUS_CANCELLED")]
        requests.send(pb.TrackOrdersRequest(unsubscribe=c.id))
        requests.close()
        assert event_summary(track.rest()) == [], "events after unsubscribe or after the end"


def test_track_ends_when_every_subscribed_order_is_final(alice):
    order = register(alice)
    requests = RequestStream()
    with StreamReader(alice.TrackOrders(iter(requests)), requests) as track:
        requests.send(pb.TrackOrdersRequest(subscribe=order.id))
        assert track.next().order == order
        requests.close()  # half-closed, but the order is still pending: the stream goes on
        cancelled = alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))
        assert track.next().order == cancelled
        assert track.rest() == []


def test_track_order_of_another_customer_is_not_found(alice, bob):
    order = register(alice)
    requests = RequestStream()
    with StreamReader(bob.TrackOrders(iter(requests)), requests) as track:
        requests.send(pb.TrackOrdersRequest(subscribe=order.id))
        error = track.failure()
    assert error.code() == Code.NOT_FOUND, error.details()


# --- authentication and authorization ----------------------------------------


NO_TOKEN_CALLS = {
    "GetOrder": pb.GetOrderRequest(order_id=str(uuid.uuid4())),
    "ListOrders": pb.ListOrdersRequest(),
    "RegisterOrder": pb.RegisterOrderRequest(),
    "WatchOrder": pb.WatchOrderRequest(order_id=str(uuid.uuid4())),
}


@pytest.mark.parametrize("method", sorted(NO_TOKEN_CALLS))
def test_no_token_is_unauthenticated(anonymous, method):
    error = expect_error(Code.UNAUTHENTICATED, getattr(anonymous, method), NO_TOKEN_CALLS[method])
    (info,) = error_details(error, error_details_pb2.ErrorInfo)
    assert info.reason


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_tokens(token: str) -> dict[str, str]:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return {
        # alice's token claiming to be bob, with alice's signature.
        "tampered": ".".join([header, _b64url(json.dumps({**claims, "sub": "bob"}).encode()), signature]),
        "alg none": ".".join([_b64url(b'{"alg":"none","typ":"JWT"}'), payload, ""]),
        "not a jwt": "not-a-jwt",
    }


@pytest.mark.parametrize("kind", ["tampered", "alg none", "not a jwt", "basic scheme"])
def test_bad_token_is_unauthenticated(alice, kind):
    if kind == "basic scheme":
        token, metadata = alice.caller.token, (("authorization", f"Basic {alice.caller.token}"),)
    else:
        token = forged_tokens(alice.caller.token)[kind]
        metadata = (("authorization", f"Bearer {token}"),)
    error = expect_error(Code.UNAUTHENTICATED, alice.ListOrders, pb.ListOrdersRequest(), metadata=metadata)
    assert token not in (error.details() or ""), "the error echoes the token"


def test_oversized_metadata_gets_a_grpc_status_not_http_431(alice):
    """40 KB of metadata: HTTP/2 alone would answer 431, which gRPC clients
    report as UNKNOWN. A token that large is UNAUTHENTICATED; other metadata
    that large is RESOURCE_EXHAUSTED, naming the limit."""
    huge = "a" * (40 * 1024)
    error = expect_error(
        Code.UNAUTHENTICATED,
        alice.ListOrders,
        pb.ListOrdersRequest(),
        metadata=(("authorization", f"Bearer {huge}"),),
    )
    assert "too large" in error.details(), error.details()
    error = expect_error(
        Code.RESOURCE_EXHAUSTED,
        alice.ListOrders,
        pb.ListOrdersRequest(),
        metadata=(*alice.caller.metadata, ("x-padding", huge)),
    )
    assert "over the limit of 16384 bytes" in error.details(), error.details()
    [info] = error_details(error, error_details_pb2.ErrorInfo)
    assert info.reason == "METADATA_TOO_LARGE"
    assert info.metadata["max_header_list_bytes"] == "16384"
    # And the same caller's next call is served.
    alice.ListOrders(pb.ListOrdersRequest())


def test_a_compressed_bomb_is_refused_at_the_methods_limit(alice):
    """A 4 MiB street compresses (gzip, as grpcio sends it) to a few KB; the
    server decompresses no further than the method's limit (16 KiB) and
    answers RESOURCE_EXHAUSTED naming the limit, without RetryInfo; the same
    call compressed but within the limit is served."""
    bomb = register_request(address=address(street="a" * (4 * 1024 * 1024)))
    assert len(gzip.compress(bomb.SerializeToString())) < 16 * 1024
    error = expect_error(Code.RESOURCE_EXHAUSTED, alice.RegisterOrder, bomb, compression=grpc.Compression.Gzip)
    assert "limit of 16384 bytes" in error.details(), error.details()
    [info] = error_details(error, error_details_pb2.ErrorInfo)
    assert info.reason == "MESSAGE_TOO_LARGE"
    assert info.metadata["max_message_bytes"] == "16384"
    assert not error_details(error, error_details_pb2.RetryInfo)
    served = alice.RegisterOrder(register_request(), compression=grpc.Compression.Gzip)
    assert served.order.id


def test_missing_scope_is_permission_denied_with_error_info(alice, alice_readonly):
    order = register(alice)
    for call, request in [
        (alice_readonly.RegisterOrder, register_request()),
        (alice_readonly.CancelOrder, pb.CancelOrderRequest(order_id=order.id)),
        (alice_readonly.UpdateOrder, iter([pb.UpdateOrderRequest(order_id=order.id, address=address(61))])),
    ]:
        assert_missing_scope(expect_error(Code.PERMISSION_DENIED, call, request), "orders:write")
    assert_missing_scope(
        expect_error(Code.PERMISSION_DENIED, alice_readonly.AdvanceOrder, pb.AdvanceOrderRequest(order_id=order.id)),
        "orders:admin",
    )
    assert alice.GetOrder(pb.GetOrderRequest(order_id=order.id)) == order  # nothing changed


def test_read_scope_is_enough_to_read(alice, alice_readonly):
    order = register(alice)
    assert alice_readonly.GetOrder(pb.GetOrderRequest(order_id=order.id)) == order
    assert order.id in {o.id for o in list_all(alice_readonly)}
    with StreamReader(alice_readonly.WatchOrder(pb.WatchOrderRequest(order_id=order.id))) as watch:
        assert watch.next().order == order


# --- health and reflection (no token) ----------------------------------------


@pytest.mark.parametrize("service", ["", "orders.v1.OrderService"])
def test_health_check_is_serving(channel, service):
    health = health_pb2_grpc.HealthStub(channel)
    response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_check_of_unknown_service_is_not_found(channel):
    health = health_pb2_grpc.HealthStub(channel)
    expect_error(Code.NOT_FOUND, health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=WAIT)


def reflect(channel, version: str, request: reflection_pb2.ServerReflectionRequest):
    """One request to grpc.reflection.{version}.ServerReflection. v1 and v1alpha have
    the same messages on the wire, so v1alpha's generated classes serve for both."""
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(info(iter([request]), timeout=WAIT))
    assert not response.HasField("error_response"), response.error_response
    return response


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_describes_the_service(channel, version):
    listed = reflect(channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {"orders.v1.OrderService", "grpc.health.v1.Health"} <= names

    found = reflect(
        channel, version, reflection_pb2.ServerReflectionRequest(file_containing_symbol="orders.v1.OrderService")
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(f) for f in found.file_descriptor_response.file_descriptor_proto
    ]
    (service,) = [s for f in files if f.package == "orders.v1" for s in f.service if s.name == "OrderService"]
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in service.method}
    assert streaming == {
        "RegisterOrder": (False, False),
        "GetOrder": (False, False),
        "ListOrders": (False, False),
        "CancelOrder": (False, False),
        "AdvanceOrder": (False, False),
        "UpdateOrder": (True, False),
        "WatchOrder": (False, True),
        "TrackOrders": (True, True),
    }
