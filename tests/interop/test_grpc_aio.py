"""The orders service seen from Python grpc.aio: every method, deadlines, cancellation,
rich errors, gzip, health, reflection and keepalive, against the real Rust server.

Each test is a coroutine run by ``asyncio.run`` (the ``aio_test`` decorator) in an event
loop of its own, with a channel of its own: grpc.aio objects belong to the loop they were
made in, and this needs no pytest plugin. Tests share one server (with the other interop
modules) and run in any order, so each registers its own fresh orders. Every call has a
deadline and every wait on a stream has a timeout: nothing can hang.
"""

from __future__ import annotations

import asyncio
import functools
import uuid

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

# Generated at session start by conftest.py.
from orders.v1 import orders_pb2 as pb  # isort: skip

# Seconds to wait for one stream message; a whole test gets TEST_TIMEOUT.
WAIT = 10.0
TEST_TIMEOUT = 60.0

Code = grpc.StatusCode
PENDING = pb.ORDER_STATUS_PENDING
CANCELLED = pb.ORDER_STATUS_CANCELLED


def aio_test(test):
    """Runs the coroutine test `test` with asyncio.run, bounded by TEST_TIMEOUT."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), TEST_TIMEOUT))

    return run


# --- test data ---------------------------------------------------------------


def new_sku() -> str:
    return f"AIO-{uuid.uuid4().hex[:12].upper()}"


def line_items() -> list[pb.LineItem]:
    return [
        pb.LineItem(sku=new_sku(), quantity=2, unit_price_cents=1250),
        pb.LineItem(sku=new_sku(), quantity=3, unit_price_cents=199),
    ]


LINE_ITEMS_TOTAL = 2 * 1250 + 3 * 199


def address(n: int = 1) -> pb.Address:
    return pb.Address(street="Main Street", number=n, city="Springfield", postal_code=f"{n:05d}")


def register_request(**fields) -> pb.RegisterOrderRequest:
    return pb.RegisterOrderRequest(**{"items": line_items(), "address": address(), **fields})


async def register(client: Client, **fields) -> pb.Order:
    return (await client.RegisterOrder(register_request(**fields))).order


async def get(client: Client, order_id: str) -> pb.Order:
    return await client.GetOrder(pb.GetOrderRequest(order_id=order_id))


async def update(client: Client, order_id: str, *addresses: pb.Address, expected_version: int = 0):
    """UpdateOrder through call.write() and done_writing()."""
    call = client.UpdateOrder(None)
    for a in addresses:
        await call.write(pb.UpdateOrderRequest(order_id=order_id, address=a, expected_version=expected_version))
    await call.done_writing()
    return await call


def summary(events) -> list[tuple[str, int, str]]:
    return [(e.order.id, e.order.version, pb.OrderStatus.Name(e.order.status)) for e in events]


# --- streams and errors ------------------------------------------------------


async def next_message(call):
    """The next message of a response stream; fails if none comes within WAIT."""
    try:
        message = await asyncio.wait_for(call.read(), WAIT)
    except asyncio.TimeoutError:
        pytest.fail(f"no stream message within {WAIT} s")
    if message is aio.EOF:
        pytest.fail(f"stream ended early: {await call.code()}: {await call.details()}")
    return message


async def rest(call) -> list:
    """The messages left until the stream ends, which it must do with OK."""
    messages = []
    while (message := await asyncio.wait_for(call.read(), WAIT)) is not aio.EOF:
        messages.append(message)
    assert await call.code() == Code.OK
    return messages


async def expect_error(code: grpc.StatusCode, call):
    """Awaits `call` (a response stream is read to its end), which must fail with `code`."""
    with pytest.raises(aio.AioRpcError) as info:
        if isinstance(call, (aio.UnaryStreamCall, aio.StreamStreamCall)):
            while await asyncio.wait_for(call.read(), WAIT) is not aio.EOF:
                pass
        else:
            await asyncio.wait_for(call, WAIT)
    error = info.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    return call


async def error_details(call, message_type) -> list:
    """The details of type `message_type` in the failed call's google.rpc.Status
    (trailer grpc-status-details-bin), read with grpcio-status' aio from_call, which
    also checks that the Status agrees with grpc-status and grpc-message."""
    status = await rpc_status.aio.from_call(call)
    assert status is not None, f"{(await call.code()).name} carries no google.rpc.Status"
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


async def assert_missing_scope(call, scope: str) -> None:
    (info,) = await error_details(await expect_error(Code.PERMISSION_DENIED, call), error_details_pb2.ErrorInfo)
    assert info.reason == "MISSING_SCOPE"
    assert info.metadata["required_scope"] == scope


# --- every method ------------------------------------------------------------


@aio_test
async def test_register_and_get(aio_connect):
    async with aio_connect() as c:
        request = register_request()
        response = await c.alice.RegisterOrder(request)
        order = response.order
        assert response.order_id == order.id
        assert order.customer_id == c.alice.caller.subject
        assert (order.status, order.version, order.total_cents) == (PENDING, 1, LINE_ITEMS_TOTAL)
        assert list(order.items) == list(request.items)
        assert order.address == request.address
        assert await get(c.alice, order.id) == order
        assert await get(c.staff, order.id) == order
        await expect_error(Code.NOT_FOUND, c.bob.GetOrder(pb.GetOrderRequest(order_id=order.id)))


@aio_test
async def test_register_with_request_id_is_idempotent(aio_connect):
    async with aio_connect() as c:
        request = register_request(request_id=str(uuid.uuid4()))
        first, again = await asyncio.gather(c.alice.RegisterOrder(request), c.alice.RegisterOrder(request))
        assert again.order_id == first.order_id
        assert again.order == first.order
        other = register_request(request_id=request.request_id)
        await expect_error(Code.ALREADY_EXISTS, c.alice.RegisterOrder(other))
        bobs = await c.bob.RegisterOrder(request)
        assert bobs.order_id != first.order_id


async def list_pages(client: Client, page_size: int, status: int = 0) -> list[list[pb.Order]]:
    pages, token = [], ""
    for _ in range(10_000):
        request = pb.ListOrdersRequest(page_size=page_size, page_token=token, status=status)
        response = await client.ListOrders(request)
        assert len(response.orders) <= page_size
        pages.append(list(response.orders))
        token = response.next_page_token
        if not token:
            return pages
    pytest.fail("ListOrders never returned an empty next_page_token")


@aio_test
async def test_list_paginates_and_filters(aio_connect):
    async with aio_connect() as c:
        mine = [(await register(c.alice)).id for _ in range(5)]
        pages = await list_pages(c.alice, 2)
        assert len(pages) >= 3
        ids = [o.id for page in pages for o in page]
        assert len(ids) == len(set(ids)), "an order was listed twice"
        assert [i for i in ids if i in mine] == mine
        await c.alice.CancelOrder(pb.CancelOrderRequest(order_id=mine[0]))
        cancelled = [o for page in await list_pages(c.alice, 500, CANCELLED) for o in page]
        assert {o.status for o in cancelled} == {CANCELLED}
        assert mine[0] in {o.id for o in cancelled}
        assert not {o.id for o in cancelled} & set(mine[1:])


@aio_test
async def test_cancel_and_advance(aio_connect):
    async with aio_connect() as c:
        order = await register(c.alice)
        stale = pb.CancelOrderRequest(order_id=order.id, expected_version=5)
        await expect_error(Code.ABORTED, c.alice.CancelOrder(stale))
        cancelled = await c.alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id, expected_version=1))
        assert (cancelled.status, cancelled.version) == (CANCELLED, 2)
        await expect_error(Code.FAILED_PRECONDITION, c.alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id)))

        other = await register(c.alice)
        steps = []
        for _ in range(3):
            advanced = await c.staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=other.id))
            steps.append((pb.OrderStatus.Name(advanced.status), advanced.version))
        assert steps == [("ORDER_STATUS_CONFIRMED", 2), ("ORDER_STATUS_SHIPPED", 3), ("ORDER_STATUS_DELIVERED", 4)]
        await expect_error(Code.FAILED_PRECONDITION, c.staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=other.id)))


@aio_test
async def test_update_order_by_write_and_by_async_iterator(aio_connect):
    async with aio_connect() as c:
        order = await register(c.alice)
        response = await update(c.alice, order.id, address(11), address(12))
        assert (response.updates_applied, response.order.version) == (2, 3)
        assert response.order.address == address(12)

        async def requests():
            for n in (13, 14):
                yield pb.UpdateOrderRequest(order_id=order.id, address=address(n), expected_version=3)

        response = await c.alice.UpdateOrder(requests())
        assert (response.updates_applied, response.order.version) == (2, 5)
        # A retry of that call finds version 5, not 3: ABORTED, nothing applied.
        await expect_error(Code.ABORTED, c.alice.UpdateOrder(requests()))
        assert await get(c.alice, order.id) == response.order


@aio_test
async def test_watch_order_streams_each_version_until_final(aio_connect):
    async with aio_connect() as c:
        order = await register(c.alice)
        watch = c.alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))
        try:
            assert (await next_message(watch)).order == order
            await c.staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))  # 2
            await update(c.alice, order.id, address(41))  # 3
            await c.alice.CancelOrder(pb.CancelOrderRequest(order_id=order.id))  # 4
            events = [await next_message(watch) for _ in range(3)]
            assert await rest(watch) == [], "events after CANCELLED"
        finally:
            watch.cancel()
        assert summary(events) == [
            (order.id, 2, "ORDER_STATUS_CONFIRMED"),
            (order.id, 3, "ORDER_STATUS_CONFIRMED"),
            (order.id, 4, "ORDER_STATUS_CANCELLED"),
        ]
        assert events[1].order.address == address(41)


@aio_test
async def test_track_orders_subscribe_and_unsubscribe(aio_connect):
    async with aio_connect() as c:
        a, b, other = await register(c.alice), await register(c.alice), await register(c.alice)
        track = c.alice.TrackOrders(None)
        try:
            await track.write(pb.TrackOrdersRequest(subscribe=a.id))
            assert (await next_message(track)).order == a
            await track.write(pb.TrackOrdersRequest(subscribe=b.id))
            assert (await next_message(track)).order == b
            advanced = await c.staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=a.id))
            assert (await next_message(track)).order == advanced
            await track.write(pb.TrackOrdersRequest(unsubscribe=b.id))
            # Requests are handled in order: once the other order's current order
            # arrives, the unsubscribe is in effect and b's change must not show up.
            await track.write(pb.TrackOrdersRequest(subscribe=other.id))
            assert (await next_message(track)).order == other
            await c.staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=b.id))
            cancelled = await c.alice.CancelOrder(pb.CancelOrderRequest(order_id=a.id))
            assert (await next_message(track)).order == cancelled
            await track.write(pb.TrackOrdersRequest(unsubscribe=other.id))
            await track.done_writing()
            assert await rest(track) == []
        finally:
            track.cancel()


# --- deadlines ---------------------------------------------------------------


@aio_test
async def test_deadline_passing_on_a_stream_is_deadline_exceeded(aio_connect):
    async with aio_connect() as c:
        order = await register(c.alice)
        watch = c.alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id), timeout=0.3)
        assert (await next_message(watch)).order == order
        await expect_error(Code.DEADLINE_EXCEEDED, watch)

        # A client stream still open at its deadline: nothing applied.
        call = c.alice.UpdateOrder(None, timeout=0.3)
        await call.write(pb.UpdateOrderRequest(order_id=order.id, address=address(81)))
        await expect_error(Code.DEADLINE_EXCEEDED, call)
        assert await get(c.alice, order.id) == order


# --- cancellation ------------------------------------------------------------


@aio_test
async def test_cancelled_watch_and_track_end_cancelled_and_the_server_goes_on(aio_connect):
    async with aio_connect() as c:
        order = await register(c.alice)
        watch = c.alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))
        track = c.alice.TrackOrders(None)
        assert (await next_message(watch)).order == order
        await track.write(pb.TrackOrdersRequest(subscribe=order.id))
        assert (await next_message(track)).order == order
        for call in (watch, track):
            assert call.cancel()
            assert await call.code() == Code.CANCELLED
            assert call.cancelled()
            with pytest.raises(asyncio.CancelledError):
                await call.read()
        # New streams on the same channel see the next change.
        again = c.alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))
        try:
            assert (await next_message(again)).order == order
            advanced = await c.staff.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id))
            assert (await next_message(again)).order == advanced
        finally:
            again.cancel()


# --- error details -----------------------------------------------------------


@aio_test
async def test_bad_request_lists_every_field_violation(aio_connect):
    async with aio_connect() as c:
        request = pb.RegisterOrderRequest(
            items=[pb.LineItem(sku="lower-case", quantity=0, unit_price_cents=-1)],
            address=pb.Address(street="", number=1, city="C", postal_code="12345!"),
        )
        call = await expect_error(Code.INVALID_ARGUMENT, c.alice.RegisterOrder(request))
        (bad_request,) = await error_details(call, error_details_pb2.BadRequest)
        assert all(v.description for v in bad_request.field_violations)
        assert sorted(v.field for v in bad_request.field_violations) == sorted(
            ["items[0].sku", "items[0].quantity", "items[0].unit_price_cents", "address.street", "address.postal_code"]
        )


@aio_test
async def test_auth_errors_carry_error_info(aio_connect):
    async with aio_connect() as c:
        call = await expect_error(Code.UNAUTHENTICATED, c.anonymous.ListOrders(pb.ListOrdersRequest()))
        (info,) = await error_details(call, error_details_pb2.ErrorInfo)
        assert info.reason == "MISSING_TOKEN"

        order = await register(c.alice)
        await assert_missing_scope(c.readonly.RegisterOrder(register_request()), "orders:write")
        await assert_missing_scope(c.readonly.CancelOrder(pb.CancelOrderRequest(order_id=order.id)), "orders:write")
        requests = [pb.UpdateOrderRequest(order_id=order.id, address=address(61))]
        await assert_missing_scope(c.readonly.UpdateOrder(iter(requests)), "orders:write")
        await assert_missing_scope(c.alice.AdvanceOrder(pb.AdvanceOrderRequest(order_id=order.id)), "orders:admin")
        assert await get(c.readonly, order.id) == order


# --- compression -------------------------------------------------------------


@aio_test
async def test_gzip_on_the_channel_and_per_call(aio_connect):
    items = [pb.LineItem(sku=new_sku(), quantity=1, unit_price_cents=5) for _ in range(100)]
    async with aio_connect(compression=grpc.Compression.Gzip) as c:
        order = await register(c.alice, items=items)
        assert len(order.items) == 100
        watch = c.alice.WatchOrder(pb.WatchOrderRequest(order_id=order.id))
        try:
            assert (await next_message(watch)).order == order
            moved = await update(c.alice, order.id, address(91), address(92))
            assert [(await next_message(watch)).order.address for _ in range(2)] == [address(91), address(92)]
            # One call of the gzip channel sent uncompressed.
            plain = grpc.Compression.NoCompression
            assert await c.alice.GetOrder(pb.GetOrderRequest(order_id=order.id), compression=plain) == moved.order
        finally:
            watch.cancel()
    async with aio_connect() as c:
        # Per call on a channel without compression.
        got = await c.alice.GetOrder(pb.GetOrderRequest(order_id=order.id), compression=grpc.Compression.Gzip)
        assert got == moved.order
        track = c.alice.TrackOrders(None, compression=grpc.Compression.Gzip)
        try:
            await track.write(pb.TrackOrdersRequest(subscribe=order.id))
            assert (await next_message(track)).order == moved.order
        finally:
            track.cancel()
        # The control: deflate, which the server does not accept (gzip and zstd
        # only), is refused, so the calls above really were compressed.
        call = c.alice.GetOrder(pb.GetOrderRequest(order_id=order.id), compression=grpc.Compression.Deflate)
        await expect_error(Code.UNIMPLEMENTED, call)
        assert "deflate" in await call.details()


# --- health and reflection (no token) ----------------------------------------


@aio_test
async def test_health_check_and_watch(aio_connect):
    async with aio_connect() as c:
        health = health_pb2_grpc.HealthStub(c.channel)
        for service in ["", "readiness", "liveness", "orders.v1.OrderService"]:
            response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=WAIT)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        await expect_error(
            Code.NOT_FOUND, health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=WAIT)
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=WAIT)
        assert (await next_message(watch)).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        assert await watch.code() == Code.CANCELLED


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
@aio_test
async def test_reflection_lists_every_service(aio_connect, version):
    # grpcio-reflection ships only v1alpha's messages; v1's are the same on the wire.
    async with aio_connect() as c:
        info = c.channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(timeout=WAIT)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        (response,) = await rest(call)
        names = {s.name for s in response.list_services_response.service}
        expected = {
            "orders.v1.OrderService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        assert expected <= names, f"missing from {version} list_services: {sorted(expected - names)}"


def test_reflection_descriptor_database_needs_a_sync_channel(channel):
    # ProtoReflectionDescriptorDatabase iterates the reflection stream synchronously:
    # on an aio channel it fails ("'StreamStreamCall' object is not an iterator"), so
    # this one test uses conftest's sync channel.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName("orders.v1.OrderService")
    streaming = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
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
    file = descriptor_pb2.FileDescriptorProto()
    service.file.CopyToProto(file)
    assert file.package == "orders.v1"


# --- keepalive ---------------------------------------------------------------


@aio_test
async def test_keepalive_pings_keep_an_idle_channel_up(aio_connect):
    options = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 2000),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC core stops pinging after 2 pings without data unless told otherwise.
        ("grpc.http2.max_pings_without_data", 0),
    ]
    idle = 4.5
    async with aio_connect(options=options) as c:
        await c.alice.ListOrders(pb.ListOrdersRequest(page_size=1))
        assert c.channel.get_state() == grpc.ChannelConnectivity.READY
        # A GOAWAY (ENHANCE_YOUR_CALM too_many_pings, or any other) or a ping
        # timeout would move the channel out of READY while it idles.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.channel.wait_for_state_change(grpc.ChannelConnectivity.READY), idle)
        assert c.channel.get_state() == grpc.ChannelConnectivity.READY
        await c.alice.ListOrders(pb.ListOrdersRequest(page_size=1))
