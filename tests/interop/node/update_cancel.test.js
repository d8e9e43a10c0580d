'use strict';
// A grpc-js UpdateOrder cancelled just after its half-close: does the server's
// record of each call agree with what it stored?
//
// grpc-js `call.cancel()` on a client stream already ended sends the
// half-close (DATA with END_STREAM) and resets the stream (RST_STREAM CANCEL)
// a moment later. The server may commit on the half-close, before it sees the
// reset. Either outcome is allowed, but the record must tell the truth: a call
// whose updates were committed is recorded OK (never Canceled), one whose
// updates were not is recorded Canceled. The metrics on the admin port are the
// record read here: over the test, the OK count of UpdateOrder must grow by the
// number of orders that changed and the Canceled count by the number that did
// not, and no other code may appear.
//
// It reads deltas of server-wide counters, so no other UpdateOrder may run on
// the server meanwhile: the runner runs the test files one at a time, and the
// test checks that the server started exactly its own calls.
//
// Then the retry: UpdateOrder with expected_version = the version the caller
// saw before its attempt applies the address once whether or not the attempt
// was committed; a retry after a commit is ABORTED and changes nothing.

const assert = require('node:assert/strict');
const { test, after } = require('node:test');
const s = require('./support');

const { grpc } = s;
const client = s.ordersClient();
const { alice } = s.callers();
after(() => client.close());

const ORDERS = 32;
// When each call is cancelled after end(): in the same tick, on the next turn
// of the event loop, or after 1 or 2 ms.
const DELAYS = ['sync', 'immediate', 1, 2];

const UPDATE_ORDER = {
  grpc_type: 'client_stream',
  grpc_service: 'orders.v1.OrderService',
  grpc_method: 'UpdateOrder',
};

/** UpdateOrder's counters now: {started, handled: {code: count}}. */
async function updateOrderRecords() {
  const text = await s.metricsText();
  const started = s.samples(text, 'grpc_server_started_total', UPDATE_ORDER);
  const handled = {};
  for (const sample of s.samples(text, 'grpc_server_handled_total', UPDATE_ORDER)) {
    handled[sample.labels.grpc_code] = (handled[sample.labels.grpc_code] || 0) + sample.value;
  }
  return { started: started.reduce((sum, x) => sum + x.value, 0), handled };
}

const total = (handled) => Object.values(handled).reduce((sum, n) => sum + n, 0);

/** The records once every UpdateOrder the server started has been recorded as handled. */
function settledRecords(what) {
  return s.eventually(async () => {
    const records = await updateOrderRecords();
    return records.started === total(records.handled) && records;
  }, what);
}

/**
 * Opens UpdateOrder for `order`, writes `moveTo`, waits until the server has
 * started the call (its started counter reaches `startedBefore` + 1), then
 * half-closes and cancels after `delay`. Resolves with what the client saw.
 */
async function updateThenCancel(order, moveTo, delay, startedBefore) {
  let outcome;
  const done = new Promise((resolve) => {
    outcome = resolve;
  });
  const update = client.UpdateOrder(new grpc.Metadata(), s.callOptions(alice, s.STREAM_TIMEOUT_MS), (error) =>
    outcome(error ? grpc.status[error.code] : 'OK'),
  );
  update.write({ order_id: order.id, address: moveTo });
  // Cancelling before the call reaches the server would leave nothing for
  // the server to record: the race under test starts once it has the call.
  await s.eventually(
    async () => (await updateOrderRecords()).started > startedBefore,
    'the server starts the UpdateOrder call',
  );
  update.end();
  if (delay === 'sync') update.cancel();
  else if (delay === 'immediate') setImmediate(() => update.cancel());
  else setTimeout(() => update.cancel(), delay);
  return done;
}

test('UpdateOrder cancelled right after its half-close is recorded as what happened to the order', async (t) => {
  const orders = [];
  for (let i = 0; i < ORDERS; i++) orders.push(await s.register(client, alice));
  const moves = orders.map((_, i) => s.address(1000 + i));

  const before = await settledRecords('no UpdateOrder in flight before the test');
  const seen = [];
  for (let i = 0; i < ORDERS; i++) {
    const started = before.started + i;
    seen.push(await updateThenCancel(orders[i], moves[i], DELAYS[i % DELAYS.length], started));
  }
  const afterwards = await s.eventually(async () => {
    const records = await updateOrderRecords();
    return records.started - before.started >= ORDERS &&
      records.started === total(records.handled) &&
      records;
  }, `the server records all ${ORDERS} cancelled UpdateOrder calls`);

  const stored = [];
  for (const order of orders) stored.push(await s.unary(client, 'GetOrder', alice, { order_id: order.id }));
  const changed = [];
  const unchanged = [];
  stored.forEach((order, i) => {
    if (order.version === 2) {
      assert.deepEqual(order.address, moves[i], `order ${i} changed, but not to its address`);
      changed.push(i);
    } else {
      assert.deepEqual(order, orders[i], `order ${i} neither changed nor as registered`);
      unchanged.push(i);
    }
  });

  const delta = {};
  for (const code of new Set([...Object.keys(before.handled), ...Object.keys(afterwards.handled)])) {
    const d = (afterwards.handled[code] || 0) - (before.handled[code] || 0);
    if (d !== 0) delta[code] = d;
  }
  const byDelay = DELAYS.map((delay) => {
    const mine = orders.map((_, i) => i).filter((i) => DELAYS[i % DELAYS.length] === delay);
    return `${delay}: ${mine.filter((i) => changed.includes(i)).length}/${mine.length} changed`;
  });
  t.diagnostic(`orders changed ${changed.length}, unchanged ${unchanged.length} (${byDelay.join(', ')})`);
  t.diagnostic(`server records (delta): ${JSON.stringify(delta)}`);
  t.diagnostic(`client saw: ${JSON.stringify(countBy(seen))}`);

  assert.equal(afterwards.started - before.started, ORDERS, 'UpdateOrder calls other than this test ran');
  // A call the client saw succeed was committed.
  seen.forEach((outcome, i) => {
    if (outcome === 'OK') assert.ok(changed.includes(i), `order ${i}: OK to the client, but unchanged`);
  });
  assert.deepEqual(
    delta,
    Object.fromEntries(
      [
        ['OK', changed.length],
        ['Canceled', unchanged.length],
      ].filter(([, n]) => n > 0),
    ),
    'server records (OK, Canceled) differ from the orders changed and unchanged',
  );

  // The retry with expected_version 1 (the version seen before the attempt):
  // applied where the attempt was not committed...
  for (const i of unchanged) {
    const retried = await s.updateOrder(client, alice, [
      { order_id: orders[i].id, address: moves[i], expected_version: 1 },
    ]);
    assert.equal(retried.order.version, 2);
    assert.deepEqual(retried.order.address, moves[i]);
  }
  // ...and ABORTED, changing nothing, where it was (by the attempt or the retry).
  for (let i = 0; i < ORDERS; i++) {
    const current = await s.unary(client, 'GetOrder', alice, { order_id: orders[i].id });
    assert.equal(current.version, 2);
    await s.expectError(
      s.updateOrder(client, alice, [{ order_id: orders[i].id, address: moves[i], expected_version: 1 }]),
      grpc.status.ABORTED,
    );
    assert.deepEqual(await s.unary(client, 'GetOrder', alice, { order_id: orders[i].id }), current);
  }
});

function countBy(values) {
  const counts = {};
  for (const v of values) counts[v] = (counts[v] || 0) + 1;
  return counts;
}
