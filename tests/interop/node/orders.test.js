'use strict';
// Every method of orders.v1.OrderService from @grpc/grpc-js, against the real
// Rust server. Tests share one server, so each registers its own fresh orders
// (unique SKUs) and asserts only about those.

const assert = require('node:assert/strict');
const { randomUUID } = require('node:crypto');
const { test, after } = require('node:test');
const s = require('./support');

const { grpc } = s;
const client = s.ordersClient();
const { alice, bob, staff } = s.callers();
after(() => client.close());

const call = (method, caller, request, extra) => s.unary(client, method, caller, request, extra);
const get = (caller, id) => call('GetOrder', caller, { order_id: id });

// --- RegisterOrder -----------------------------------------------------------

test('RegisterOrder creates a pending order', async () => {
  const request = s.registerRequest();
  const response = await call('RegisterOrder', alice, request);
  const order = response.order;
  assert.ok(response.order_id);
  assert.equal(response.order_id, order.id);
  assert.equal(order.customer_id, alice.subject);
  assert.equal(order.status, 'ORDER_STATUS_PENDING');
  assert.equal(order.version, 1);
  assert.equal(order.total_cents, s.LINE_ITEMS_TOTAL);
  assert.deepEqual(order.items, request.items);
  assert.deepEqual(order.address, request.address);
  assert.ok(order.create_time.seconds > 0);
  assert.deepEqual(order.update_time, order.create_time);
});

test('RegisterOrder with a request_id is idempotent per caller', async () => {
  const request = s.registerRequest({ request_id: randomUUID() });
  const first = await call('RegisterOrder', alice, request);
  const again = await call('RegisterOrder', alice, request);
  assert.equal(again.order_id, first.order_id);
  assert.deepEqual(again.order, first.order);
  // Never a second order: exactly one of alice's orders has these SKUs.
  const sku = request.items[0].sku;
  const mine = (await listAll(alice)).filter((o) => o.items[0].sku === sku);
  assert.deepEqual(
    mine.map((o) => o.id),
    [first.order_id],
  );
  // The same request_id with another payload is ALREADY_EXISTS.
  const other = { ...s.registerRequest(), request_id: request.request_id };
  await s.expectError(call('RegisterOrder', alice, other), grpc.status.ALREADY_EXISTS);
  // The request id is alice's: bob's identical request is his own new order.
  const bobs = await call('RegisterOrder', bob, request);
  assert.notEqual(bobs.order_id, first.order_id);
  assert.equal(bobs.order.customer_id, bob.subject);
});

// --- GetOrder ----------------------------------------------------------------

test('GetOrder returns the order to its customer and staff, NOT_FOUND to others', async () => {
  const order = await s.register(client, alice);
  assert.deepEqual(await get(alice, order.id), order);
  assert.deepEqual(await get(staff, order.id), order);
  await s.expectError(get(bob, order.id), grpc.status.NOT_FOUND);
  await s.expectError(get(alice, randomUUID()), grpc.status.NOT_FOUND);
});

// --- ListOrders --------------------------------------------------------------

/** Every page of the caller's orders, following next_page_token to the end. */
async function listPages(caller, pageSize, status = 'ORDER_STATUS_UNSPECIFIED') {
  const pages = [];
  let token = '';
  for (let i = 0; i < 10_000; i++) {
    const response = await call('ListOrders', caller, { page_size: pageSize, page_token: token, status });
    assert.ok(response.orders.length <= pageSize);
    pages.push(response.orders);
    token = response.next_page_token;
    if (!token) return pages;
  }
  assert.fail('ListOrders never returned an empty next_page_token');
}

async function listAll(caller, status) {
  return (await listPages(caller, 500, status)).flat();
}

test('ListOrders paginates with next_page_token, oldest first', async () => {
  const mine = [];
  for (let i = 0; i < 5; i++) mine.push((await s.register(client, alice)).id);
  const pages = await listPages(alice, 2);
  assert.ok(pages.length >= 3, `${pages.length} pages`);
  const ids = pages.flat().map((o) => o.id);
  assert.equal(new Set(ids).size, ids.length, 'an order was listed twice');
  assert.deepEqual(
    ids.filter((id) => mine.includes(id)),
    mine,
  );
  assert.deepEqual([...new Set(pages.flat().map((o) => o.customer_id))], [alice.subject]);
  // A forged cursor is INVALID_ARGUMENT.
  await s.expectError(
    call('ListOrders', alice, { page_size: 2, page_token: 'garbage' }),
    grpc.status.INVALID_ARGUMENT,
  );
});

test('ListOrders filters by status', async () => {
  const pending = await s.register(client, alice);
  const cancelled = await call('CancelOrder', alice, { order_id: (await s.register(client, alice)).id });
  const listed = await listAll(alice, 'ORDER_STATUS_CANCELLED');
  assert.deepEqual([...new Set(listed.map((o) => o.status))], ['ORDER_STATUS_CANCELLED']);
  const ids = listed.map((o) => o.id);
  assert.ok(ids.includes(cancelled.id));
  assert.ok(!ids.includes(pending.id));
});

// --- CancelOrder / AdvanceOrder ----------------------------------------------

test('CancelOrder cancels a pending order once', async () => {
  const order = await s.register(client, alice);
  await s.expectError(
    call('CancelOrder', alice, { order_id: order.id, expected_version: 7 }),
    grpc.status.ABORTED,
  );
  const cancelled = await call('CancelOrder', alice, { order_id: order.id, expected_version: 1 });
  assert.equal(cancelled.status, 'ORDER_STATUS_CANCELLED');
  assert.equal(cancelled.version, 2);
  assert.deepEqual(await get(alice, order.id), cancelled);
  await s.expectError(call('CancelOrder', alice, { order_id: order.id }), grpc.status.FAILED_PRECONDITION);
  await s.expectError(call('CancelOrder', bob, { order_id: order.id }), grpc.status.NOT_FOUND);
});

test('AdvanceOrder (staff) moves an order to DELIVERED, then refuses', async () => {
  const order = await s.register(client, alice);
  const steps = [];
  for (let i = 0; i < 3; i++) {
    const advanced = await call('AdvanceOrder', staff, { order_id: order.id });
    steps.push([advanced.status, advanced.version]);
  }
  assert.deepEqual(steps, [
    ['ORDER_STATUS_CONFIRMED', 2],
    ['ORDER_STATUS_SHIPPED', 3],
    ['ORDER_STATUS_DELIVERED', 4],
  ]);
  await s.expectError(call('AdvanceOrder', staff, { order_id: order.id }), grpc.status.FAILED_PRECONDITION);
  await s.expectError(
    s.updateOrder(client, alice, [{ order_id: order.id, address: s.address(9) }]),
    grpc.status.FAILED_PRECONDITION,
  );
  assert.equal((await get(alice, order.id)).version, 4);
});

// --- UpdateOrder (client streaming) ------------------------------------------

test('UpdateOrder applies every streamed address as its own version', async () => {
  const order = await s.register(client, alice);
  const moves = [11, 12, 13].map((n) => s.address(n));
  const response = await s.updateOrder(
    client,
    alice,
    moves.map((a) => ({ order_id: order.id, address: a })),
  );
  assert.equal(response.updates_applied, 3);
  assert.equal(response.order.version, order.version + 3);
  assert.deepEqual(response.order.address, moves[2]);
  assert.equal(response.order.status, 'ORDER_STATUS_PENDING');
  assert.deepEqual(await get(alice, order.id), response.order);
});

test('UpdateOrder with expected_version applies once; a stale one is ABORTED', async () => {
  const order = await s.register(client, alice);
  const request = { order_id: order.id, address: s.address(14), expected_version: 1 };
  const applied = await s.updateOrder(client, alice, [request]);
  assert.equal(applied.order.version, 2);
  // The same call again (a retry) finds version 2 and changes nothing.
  await s.expectError(s.updateOrder(client, alice, [{ ...request, address: s.address(15) }]), grpc.status.ABORTED);
  assert.deepEqual(await get(alice, order.id), applied.order);
});

test('UpdateOrder naming two orders is INVALID_ARGUMENT and changes nothing', async () => {
  const first = await s.register(client, alice);
  const second = await s.register(client, alice);
  await s.expectError(
    s.updateOrder(client, alice, [
      { order_id: first.id, address: s.address(21) },
      { order_id: second.id, address: s.address(22) },
    ]),
    grpc.status.INVALID_ARGUMENT,
  );
  assert.deepEqual(await get(alice, first.id), first);
  assert.deepEqual(await get(alice, second.id), second);
});

// --- WatchOrder (server streaming) -------------------------------------------

test('WatchOrder streams every version until DELIVERED, then ends OK', async () => {
  const order = await s.register(client, alice);
  const watch = s.watchOrder(client, alice, { order_id: order.id });
  try {
    // The current order comes first; only then is the watch surely in place.
    assert.deepEqual((await watch.next()).order, order);
    await call('AdvanceOrder', staff, { order_id: order.id }); // 2 CONFIRMED
    const moves = [s.address(41), s.address(42)];
    await s.updateOrder(
      client,
      alice,
      moves.map((a) => ({ order_id: order.id, address: a })),
    ); // 3, 4
    await call('AdvanceOrder', staff, { order_id: order.id }); // 5 SHIPPED
    await call('AdvanceOrder', staff, { order_id: order.id }); // 6 DELIVERED
    const events = [];
    for (let i = 0; i < 5; i++) events.push(await watch.next());
    assert.deepEqual(await watch.rest(), [], 'events after DELIVERED');
    assert.deepEqual(s.summary(events), [
      [order.id, 2, 'ORDER_STATUS_CONFIRMED'],
      [order.id, 3, 'ORDER_STATUS_CONFIRMED'],
      [order.id, 4, 'ORDER_STATUS_CONFIRMED'],
      [order.id, 5, 'ORDER_STATUS_SHIPPED'],
      [order.id, 6, 'ORDER_STATUS_DELIVERED'],
    ]);
    assert.deepEqual(
      events.slice(1, 3).map((e) => e.order.address),
      moves,
    );
  } finally {
    watch.close();
  }
});

test('WatchOrder resumes after a version', async () => {
  const order = await s.register(client, alice); // 1
  await call('AdvanceOrder', staff, { order_id: order.id }); // 2
  await s.updateOrder(client, alice, [{ order_id: order.id, address: s.address(51) }]); // 3
  const watch = s.watchOrder(client, alice, { order_id: order.id, after_version: 1 });
  try {
    const caughtUp = [await watch.next(), await watch.next()];
    await call('CancelOrder', alice, { order_id: order.id }); // 4
    const events = [...caughtUp, await watch.next()];
    assert.deepEqual(await watch.rest(), []);
    assert.deepEqual(s.summary(events), [
      [order.id, 2, 'ORDER_STATUS_CONFIRMED'],
      [order.id, 3, 'ORDER_STATUS_CONFIRMED'],
      [order.id, 4, 'ORDER_STATUS_CANCELLED'],
    ]);
  } finally {
    watch.close();
  }
});

test("WatchOrder of another customer's order is NOT_FOUND", async () => {
  const order = await s.register(client, alice);
  const watch = s.watchOrder(client, bob, { order_id: order.id });
  const error = await watch.failure();
  assert.equal(error.code, grpc.status.NOT_FOUND, error.details);
});

// --- TrackOrders (bidirectional) ---------------------------------------------

test('TrackOrders follows subscribed orders and drops unsubscribed ones', async () => {
  const a = await s.register(client, alice);
  const b = await s.register(client, alice);
  const c = await s.register(client, alice);
  const track = s.trackOrders(client, alice);
  try {
    track.call.write({ subscribe: a.id });
    assert.deepEqual((await track.next()).order, a);
    track.call.write({ subscribe: b.id });
    assert.deepEqual((await track.next()).order, b);

    await call('AdvanceOrder', staff, { order_id: a.id });
    assert.deepEqual(s.summary([await track.next()]), [[a.id, 2, 'ORDER_STATUS_CONFIRMED']]);
    await s.updateOrder(client, alice, [{ order_id: b.id, address: s.address(71) }]);
    const moved = await track.next();
    assert.deepEqual(s.summary([moved]), [[b.id, 2, 'ORDER_STATUS_PENDING']]);
    assert.deepEqual(moved.order.address, s.address(71));

    track.call.write({ unsubscribe: b.id });
    // Requests are handled in order: once c's current order arrives the
    // unsubscribe is in effect, and b's next change must not show up.
    track.call.write({ subscribe: c.id });
    assert.deepEqual((await track.next()).order, c);
    await call('AdvanceOrder', staff, { order_id: b.id });

    // a reaches a final status, c is dropped, the client half-closes: the end.
    await call('CancelOrder', alice, { order_id: a.id });
    assert.deepEqual(s.summary([await track.next()]), [[a.id, 3, 'ORDER_STATUS_CANCELLED']]);
    track.call.write({ unsubscribe: c.id });
    track.call.end();
    assert.deepEqual(s.summary(await track.rest()), [], 'events after unsubscribe or after the end');
  } finally {
    track.close();
  }
});

test("TrackOrders of another customer's order is NOT_FOUND", async () => {
  const order = await s.register(client, alice);
  const track = s.trackOrders(client, bob);
  track.call.write({ subscribe: order.id });
  const error = await track.failure();
  assert.equal(error.code, grpc.status.NOT_FOUND, error.details);
});
