'use strict';
// What @grpc/grpc-js does around the calls: deadlines, cancellation, gzip and
// keepalive, against the real Rust server.

const assert = require('node:assert/strict');
const { setTimeout: sleep } = require('node:timers/promises');
const { test, after } = require('node:test');
const s = require('./support');

const { grpc } = s;
const client = s.ordersClient();
const { alice, staff } = s.callers();
const clients = [client];
after(() => clients.forEach((c) => c.close()));

const call = (method, caller, request, extra) => s.unary(client, method, caller, request, extra);

/** The value of grpc_server_handled_total for one method and code (0 when absent). */
async function handled(type, method, code) {
  const found = s.samples(await s.metricsText(), 'grpc_server_handled_total', {
    grpc_type: type,
    grpc_service: 'orders.v1.OrderService',
    grpc_method: method,
    grpc_code: code,
  });
  return found.reduce((sum, sample) => sum + sample.value, 0);
}

// --- deadlines -----------------------------------------------------------------

test('a WatchOrder whose deadline passes ends DEADLINE_EXCEEDED', async () => {
  const order = await s.register(client, alice);
  const started = Date.now();
  const watch = s.watchOrder(client, alice, { order_id: order.id }, { deadline: started + 300 });
  try {
    assert.deepEqual((await watch.next()).order, order);
    const error = await watch.failure();
    assert.equal(error.code, grpc.status.DEADLINE_EXCEEDED, error.details);
    // The server answers a margin before the client's deadline, so its
    // DEADLINE_EXCEEDED (with details) arrives before the client gives up
    // on its own: min(t/20, t/100 + 20 ms), docs/operations.md "Deadlines, load and failures". Not earlier.
    const margin = Math.min(300 / 20, 300 / 100 + 20);
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 300 - margin - 2, `ended after ${elapsed} ms, before its deadline less the server's margin`);
  } finally {
    watch.close();
  }
  // The server goes on serving the order.
  assert.deepEqual(await call('GetOrder', alice, { order_id: order.id }), order);
});

test('an UpdateOrder never half-closed before its deadline is DEADLINE_EXCEEDED and changes nothing', async () => {
  const order = await s.register(client, alice);
  const error = await s.expectError(
    new Promise((resolve, reject) => {
      const update = client.UpdateOrder(
        new grpc.Metadata(),
        s.callOptions(alice, 300),
        (e, response) => (e ? reject(e) : resolve(response)),
      );
      update.write({ order_id: order.id, address: s.address(81) });
      // No end(): the stream is still open when the deadline passes.
    }),
    grpc.status.DEADLINE_EXCEEDED,
  );
  assert.ok(error);
  assert.deepEqual(await call('GetOrder', alice, { order_id: order.id }), order);
});

test('a deadline already past fails the call DEADLINE_EXCEEDED', async () => {
  await s.expectError(
    call('ListOrders', alice, { page_size: 1 }, { deadline: Date.now() - 1 }),
    grpc.status.DEADLINE_EXCEEDED,
  );
});

// --- cancellation --------------------------------------------------------------

test('a cancelled WatchOrder ends CANCELLED; the server records it and keeps serving', async () => {
  const order = await s.register(client, alice);
  const before = await handled('server_stream', 'WatchOrder', 'Canceled');
  const watch = s.watchOrder(client, alice, { order_id: order.id });
  try {
    assert.deepEqual((await watch.next()).order, order);
    watch.call.cancel();
    const error = await watch.failure();
    assert.equal(error.code, grpc.status.CANCELLED, error.details);
  } finally {
    watch.close();
  }
  await s.eventually(
    async () => (await handled('server_stream', 'WatchOrder', 'Canceled')) > before,
    'the server records the cancelled WatchOrder as Canceled',
  );
  // A new watch of the same order sees the next change.
  const again = s.watchOrder(client, alice, { order_id: order.id });
  try {
    assert.deepEqual((await again.next()).order, order);
    const advanced = await call('AdvanceOrder', staff, { order_id: order.id });
    assert.deepEqual((await again.next()).order, advanced);
  } finally {
    again.close();
  }
});

test('a cancelled TrackOrders ends CANCELLED; the server records it and keeps serving', async () => {
  const order = await s.register(client, alice);
  const before = await handled('bidi_stream', 'TrackOrders', 'Canceled');
  const track = s.trackOrders(client, alice);
  try {
    track.call.write({ subscribe: order.id });
    assert.deepEqual((await track.next()).order, order);
    track.call.cancel();
    const error = await track.failure();
    assert.equal(error.code, grpc.status.CANCELLED, error.details);
  } finally {
    track.close();
  }
  await s.eventually(
    async () => (await handled('bidi_stream', 'TrackOrders', 'Canceled')) > before,
    'the server records the cancelled TrackOrders as Canceled',
  );
  const again = s.trackOrders(client, alice);
  try {
    again.call.write({ subscribe: order.id });
    assert.deepEqual((await again.next()).order, order);
    const cancelled = await call('CancelOrder', alice, { order_id: order.id });
    assert.deepEqual((await again.next()).order, cancelled);
    again.call.end();
    assert.deepEqual(await again.rest(), []);
  } finally {
    again.close();
  }
});

// --- compression ---------------------------------------------------------------

test('with grpc.default_compression_algorithm = gzip every kind of call works', async () => {
  assert.equal(grpc.compressionAlgorithms.gzip, 2);
  const gzip = s.ordersClient({ 'grpc.default_compression_algorithm': grpc.compressionAlgorithms.gzip });
  clients.push(gzip);
  // Unary, with a request large enough that gzip has something to do.
  const items = Array.from({ length: 100 }, () => ({ sku: s.newSku(), quantity: 1, unit_price_cents: 5 }));
  const order = (await s.unary(gzip, 'RegisterOrder', alice, s.registerRequest({ items }))).order;
  assert.equal(order.items.length, 100);
  assert.deepEqual(await s.unary(gzip, 'GetOrder', alice, { order_id: order.id }), order);
  // Server streaming and bidi streaming.
  const watch = s.watchOrder(gzip, alice, { order_id: order.id });
  const track = s.trackOrders(gzip, alice);
  try {
    assert.deepEqual((await watch.next()).order, order);
    track.call.write({ subscribe: order.id });
    assert.deepEqual((await track.next()).order, order);
    // Client streaming. grpc-js has no per-call compression setting: a call
    // takes its channel's, and a single message can opt out with the
    // NoCompress write flag (2), so this stream mixes both kinds of message.
    const moved = await new Promise((resolve, reject) => {
      const update = gzip.UpdateOrder(new grpc.Metadata(), s.callOptions(alice, s.TIMEOUT_MS), (e, r) =>
        e ? reject(e) : resolve(r),
      );
      update.write({ order_id: order.id, address: s.address(91) });
      update.write({ order_id: order.id, address: s.address(92) }, 2 /* WriteFlags.NoCompress */);
      update.write({ order_id: order.id, address: s.address(93) });
      update.end();
    });
    assert.equal(moved.updates_applied, 3);
    assert.deepEqual(moved.order.address, s.address(93));
    const events = [await watch.next(), await watch.next(), await watch.next()];
    assert.deepEqual(
      events.map((e) => e.order.address),
      [91, 92, 93].map((n) => s.address(n)),
    );
    for (let i = 0; i < 3; i++) await track.next();
    track.call.end();
  } finally {
    watch.close();
    track.close();
  }
});

test('the compression option does compress: deflate, which the server does not take, is UNIMPLEMENTED', async () => {
  // The control for the test above: the same option with an algorithm the
  // server does not accept (it takes gzip and zstd) is refused, so the
  // option's requests really are compressed and gzip is really accepted.
  const deflate = s.ordersClient({ 'grpc.default_compression_algorithm': grpc.compressionAlgorithms.deflate });
  clients.push(deflate);
  const error = await s.expectError(
    s.unary(deflate, 'ListOrders', alice, { page_size: 1 }),
    grpc.status.UNIMPLEMENTED,
  );
  assert.match(error.details, /deflate/);
});

// --- keepalive -----------------------------------------------------------------

/** grpc-js's channelz view of a client's connections: [{id, keepAlivesSent}]. */
async function sockets(c) {
  const handlers = grpc.getChannelzHandlers();
  const ask = (method, request) =>
    new Promise((resolve, reject) =>
      handlers[method]({ request }, (error, response) => (error ? reject(error) : resolve(response))),
    );
  const channelId = c.getChannel().getChannelzRef().id;
  const { channel } = await ask('GetChannel', { channel_id: channelId });
  const found = [];
  for (const ref of channel.subchannel_ref) {
    const { subchannel } = await ask('GetSubchannel', { subchannel_id: ref.subchannel_id });
    for (const socketRef of subchannel.socket_ref) {
      const { socket } = await ask('GetSocket', { socket_id: socketRef.socket_id });
      found.push({ id: socketRef.socket_id, keepAlivesSent: Number(socket.data.keep_alives_sent) });
    }
  }
  return found;
}

test('keepalive pings on an idle channel: the connection stays up, no too_many_pings', async (t) => {
  const errors = [];
  grpc.setLogger({
    error: (...args) => errors.push(args.join(' ')),
    warn: (...args) => errors.push(args.join(' ')),
    info: () => {},
    debug: () => {},
  });
  // grpc-js logs at ERROR and above by default: let warnings through too.
  grpc.setLogVerbosity(grpc.logVerbosity.INFO);
  const keepaliveMs = 1000;
  const idleMs = 4500;
  const pinging = s.ordersClient({
    'grpc.keepalive_time_ms': keepaliveMs,
    'grpc.keepalive_timeout_ms': 2000,
    'grpc.keepalive_permit_without_calls': 1,
  });
  clients.push(pinging);
  await s.unary(pinging, 'ListOrders', alice, { page_size: 1 });
  const [first, ...others] = await sockets(pinging);
  assert.ok(first, 'no connection after a call');
  assert.equal(others.length, 0);

  // Idle: no call for several keepalive periods. Any change of the channel's
  // state (a GOAWAY, a ping timeout) would show here.
  const channel = pinging.getChannel();
  assert.equal(channel.getConnectivityState(false), grpc.connectivityState.READY);
  const changes = [];
  channel.watchConnectivityState(grpc.connectivityState.READY, Date.now() + idleMs, (error) => {
    if (!error) changes.push(grpc.connectivityState[channel.getConnectivityState(false)]);
  });
  await sleep(idleMs);
  assert.deepEqual(changes, [], 'the channel left READY while idle');

  const [later, ...more] = await sockets(pinging);
  assert.equal(more.length, 0);
  assert.equal(later.id, first.id, 'the connection was replaced while idle');
  const pings = later.keepAlivesSent - first.keepAlivesSent;
  t.diagnostic(`${pings} keepalive pings in ${idleMs} ms of idleness`);
  assert.ok(pings >= Math.floor(idleMs / keepaliveMs) - 1, `only ${pings} keepalive pings in ${idleMs} ms`);
  // The next call goes over the same connection.
  await s.unary(pinging, 'ListOrders', alice, { page_size: 1 });
  assert.equal((await sockets(pinging))[0].id, first.id);
  assert.deepEqual(
    errors.filter((line) => /excess pings|too_many_pings|ENHANCE_YOUR_CALM/i.test(line)),
    [],
  );
  assert.deepEqual(errors, [], 'grpc-js logged warnings or errors');
});
