'use strict';
// The connectrpc clients (@connectrpc/connect-node) against the real Rust
// server, over each protocol it serves on its one TLS port: Connect (JSON,
// and protobuf), gRPC and gRPC-Web on HTTP/2, and the browser protocols on
// HTTP/1.1 too. The code for the messages and the service is protoc-gen-es's
// (gen/, made by scripts/node-env from the repository's protos), so these
// are the calls a TypeScript client of the service makes. Every call has a deadline and every wait on a stream a
// timeout: nothing can hang.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { describe, test } = require('node:test');
const { Code, ConnectError, createClient } = require('@connectrpc/connect');
const {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} = require('@connectrpc/connect-node');
const s = require('./support');

function generated(file) {
  const where = path.join(__dirname, 'gen', file);
  if (!fs.existsSync(where)) {
    throw new Error(`${where} is missing: scripts/node-env generates it (buf generate)`);
  }
  return require(where);
}
const { OrderService, OrderStatus } = generated('orders/v1/orders_pb.js');
const { BadRequestSchema, ErrorInfoSchema } = generated('google/rpc/error_details_pb.js');

const TIMEOUT_MS = s.TIMEOUT_MS;
const WAIT_MS = s.WAIT_MS;
const baseUrl = `https://${s.env('ORDERS_ENDPOINT')}`;
const ca = fs.readFileSync(s.env('ORDERS_CA_CERT'));
const tokens = {
  alice: s.env('ORDERS_TOKEN'),
  staff: s.env('ORDERS_TOKEN_STAFF'),
  readonly: s.env('ORDERS_TOKEN_READONLY'),
};

/** Sends the token as `authorization: Bearer`, as a browser or a BFF would. */
function bearer(token) {
  return (next) => async (request) => {
    request.header.set('authorization', `Bearer ${token}`);
    return next(request);
  };
}

// Each protocol, with the header that carries a deadline in it.
const PROTOCOLS = [
  {
    name: 'Connect (JSON)',
    transport: (options) => createConnectTransport(options),
    deadline: (ms) => ({ 'connect-timeout-ms': String(ms) }),
  },
  {
    name: 'Connect (protobuf)',
    transport: (options) => createConnectTransport({ ...options, useBinaryFormat: true }),
    deadline: (ms) => ({ 'connect-timeout-ms': String(ms) }),
  },
  {
    name: 'gRPC',
    transport: (options) => createGrpcTransport(options),
    deadline: (ms) => ({ 'grpc-timeout': `${ms}m` }),
  },
  {
    name: 'gRPC-Web',
    transport: (options) => createGrpcWebTransport(options),
    deadline: (ms) => ({ 'grpc-timeout': `${ms}m` }),
  },
];

function lineItems() {
  return [
    { sku: s.newSku(), quantity: 2, unitPriceCents: 1250n },
    { sku: s.newSku(), quantity: 3, unitPriceCents: 199n },
  ];
}

function address(fields = {}) {
  return { street: 'Main Street', number: 7n, city: 'Springfield', postalCode: '00007', ...fields };
}

/** Awaits `promise`, which must fail with `code`; returns the ConnectError. */
async function failure(promise, code) {
  let error;
  try {
    await promise;
  } catch (e) {
    error = ConnectError.from(e);
  }
  assert.ok(error, `expected ${Code[code]}, got a response`);
  assert.equal(
    error.code,
    code,
    `expected ${Code[code]}, got ${Code[error.code]}: ${error.rawMessage}`,
  );
  return error;
}

/** The one ErrorInfo of an error. */
function errorInfo(error) {
  const infos = error.findDetails(ErrorInfoSchema);
  assert.equal(infos.length, 1, `${Code[error.code]} carries one google.rpc.ErrorInfo`);
  return infos[0];
}

/**
 * A response stream read as it comes, so a test can make changes meanwhile;
 * each wait has a timeout. `close()` cancels the call through `controller`.
 */
function reader(stream, controller) {
  const iterator = stream[Symbol.asyncIterator]();
  const within = (promise, what) => {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  };
  return {
    async next() {
      const { done, value } = await within(iterator.next(), 'stream message');
      assert.ok(!done, 'the stream ended early');
      return value;
    },
    /** How the stream ends: its error, or null for OK. */
    async end() {
      try {
        for (;;) {
          const { done } = await within(iterator.next(), 'end of the stream');
          if (done) return null;
        }
      } catch (e) {
        return ConnectError.from(e);
      }
    },
    close() {
      controller.abort();
      // One more read sees the cancellation, and connect then clears the
      // call's deadline timer, which would keep the process alive.
      iterator.next().catch(() => {});
    },
  };
}

/** WatchOrder, read with `reader`. */
function follow(client, request, options = {}) {
  const controller = new AbortController();
  const stream = client.watchOrder(request, {
    timeoutMs: TIMEOUT_MS * 3,
    signal: controller.signal,
    ...options,
  });
  return reader(stream, controller);
}

/**
 * Request messages for a client or bidirectional stream, sent as they are
 * pushed; `close()` half-closes.
 */
function requests() {
  const queue = [];
  let wake = null;
  let closed = false;
  return {
    push(message) {
      queue.push(message);
      if (wake) wake();
    },
    close() {
      closed = true;
      if (wake) wake();
    },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (queue.length > 0) yield queue.shift();
        if (closed) return;
        await new Promise((resolve) => {
          wake = resolve;
        });
        wake = null;
      }
    },
  };
}

for (const protocol of PROTOCOLS) {
  describe(`connect-node over ${protocol.name}, HTTP/2`, () => {
    const clientFor = (token) =>
      createClient(
        OrderService,
        protocol.transport({
          baseUrl,
          httpVersion: '2',
          nodeOptions: { ca },
          interceptors: [bearer(token)],
        }),
      );
    const alice = clientFor(tokens.alice);
    const staff = clientFor(tokens.staff);
    const readonly = clientFor(tokens.readonly);
    const call = { timeoutMs: TIMEOUT_MS };

    test('unary: RegisterOrder, then GetOrder', async () => {
      const items = lineItems();
      const registered = await alice.registerOrder({ items, address: address() }, call);
      const order = registered.order;
      assert.ok(registered.orderId);
      assert.equal(order.id, registered.orderId);
      assert.equal(order.status, OrderStatus.PENDING);
      assert.equal(order.version, 1n);
      assert.equal(order.totalCents, 2n * 1250n + 3n * 199n);
      assert.deepEqual(
        order.items.map((i) => [i.sku, i.quantity, i.unitPriceCents]),
        items.map((i) => [i.sku, i.quantity, i.unitPriceCents]),
      );
      assert.equal(order.address.postalCode, '00007');
      assert.ok(order.createTime.seconds > 0n);

      const got = await alice.getOrder({ orderId: order.id }, call);
      assert.equal(got.id, order.id);
      assert.equal(got.version, 1n);
      assert.equal(got.status, OrderStatus.PENDING);
      assert.deepEqual(got.createTime, order.createTime);
    });

    test('server streaming: WatchOrder sends the order, then the change staff make', async () => {
      const { order } = await alice.registerOrder({ items: lineItems(), address: address() }, call);
      const watch = follow(alice, { orderId: order.id });
      try {
        const first = await watch.next();
        assert.equal(first.order.id, order.id);
        assert.equal(first.order.version, 1n);
        assert.equal(first.order.status, OrderStatus.PENDING);

        const advanced = await staff.advanceOrder({ orderId: order.id, expectedVersion: 1n }, call);
        assert.equal(advanced.status, OrderStatus.CONFIRMED);
        const second = await watch.next();
        assert.equal(second.order.version, 2n);
        assert.equal(second.order.status, OrderStatus.CONFIRMED);
      } finally {
        watch.close();
      }
    });

    test('client streaming: UpdateOrder applies each address as its own version', async () => {
      const { order } = await alice.registerOrder({ items: lineItems(), address: address() }, call);
      const updates = requests();
      updates.push({ orderId: order.id, address: address({ street: 'Oak Lane' }), expectedVersion: 1n });
      updates.push({ orderId: order.id, address: address({ street: 'Elm Road' }), expectedVersion: 1n });
      updates.close();
      const response = await alice.updateOrder(updates, call);
      assert.equal(response.updatesApplied, 2);
      assert.equal(response.order.version, 3n);
      assert.equal(response.order.address.street, 'Elm Road');
    });

    test('bidirectional streaming: TrackOrders follows what each request subscribes', async () => {
      const first = (await alice.registerOrder({ items: lineItems(), address: address() }, call)).order;
      const second = (await alice.registerOrder({ items: lineItems(), address: address() }, call)).order;
      const subscriptions = requests();
      const controller = new AbortController();
      const track = reader(
        alice.trackOrders(subscriptions, { timeoutMs: TIMEOUT_MS * 3, signal: controller.signal }),
        controller,
      );
      const event = async () => {
        const { order } = await track.next();
        return [order.id, order.version, order.status];
      };
      try {
        // Each subscription is sent after the answer to the one before.
        subscriptions.push({ action: { case: 'subscribe', value: first.id } });
        assert.deepEqual(await event(), [first.id, 1n, OrderStatus.PENDING]);
        subscriptions.push({ action: { case: 'subscribe', value: second.id } });
        assert.deepEqual(await event(), [second.id, 1n, OrderStatus.PENDING]);
        await alice.cancelOrder({ orderId: second.id }, call);
        assert.deepEqual(await event(), [second.id, 2n, OrderStatus.CANCELLED]);
        await alice.cancelOrder({ orderId: first.id }, call);
        assert.deepEqual(await event(), [first.id, 2n, OrderStatus.CANCELLED]);
        // Half-closed, and nothing followed can change: the stream ends OK.
        subscriptions.close();
        assert.equal(await track.end(), null);
      } finally {
        track.close();
      }
    });

    test('NOT_FOUND with ErrorInfo ORDER_NOT_FOUND', async () => {
      const error = await failure(
        alice.getOrder({ orderId: '0190a6b4-0000-7000-8000-000000000000' }, call),
        Code.NotFound,
      );
      const info = errorInfo(error);
      assert.equal(info.reason, 'ORDER_NOT_FOUND');
      assert.equal(info.domain, 'orders.v1.OrderService');
    });

    test('INVALID_ARGUMENT with a BadRequest naming the field', async () => {
      const error = await failure(
        alice.registerOrder({ items: lineItems(), address: address({ city: '  ' }) }, call),
        Code.InvalidArgument,
      );
      assert.equal(errorInfo(error).reason, 'INVALID_REQUEST');
      const [bad, ...more] = error.findDetails(BadRequestSchema);
      assert.ok(bad, 'INVALID_ARGUMENT carries a google.rpc.BadRequest');
      assert.equal(more.length, 0);
      assert.deepEqual(
        bad.fieldViolations.map((v) => v.field),
        ['address.city'],
      );
      assert.ok(bad.fieldViolations[0].description, 'the violation is described');
    });

    test('PERMISSION_DENIED for a missing scope, naming it', async () => {
      const error = await failure(
        readonly.registerOrder({ items: lineItems(), address: address() }, call),
        Code.PermissionDenied,
      );
      const info = errorInfo(error);
      assert.equal(info.reason, 'MISSING_SCOPE');
      assert.equal(info.metadata.required_scope, 'orders:write');
    });

    test('UNAUTHENTICATED without a token', async () => {
      const anonymous = createClient(
        OrderService,
        protocol.transport({ baseUrl, httpVersion: '2', nodeOptions: { ca } }),
      );
      const error = await failure(anonymous.getOrder({ orderId: 'x' }, call), Code.Unauthenticated);
      assert.equal(errorInfo(error).reason, 'MISSING_TOKEN');
    });

    test('deadlines: a tiny timeoutMs is DEADLINE_EXCEEDED', async () => {
      const { order } = await alice.registerOrder({ items: lineItems(), address: address() }, call);
      // The order does not change, so the stream can only end by its deadline.
      const watch = follow(alice, { orderId: order.id }, { timeoutMs: 1 });
      try {
        const error = await watch.end();
        assert.ok(error, 'the stream ended with OK');
        assert.equal(error.code, Code.DeadlineExceeded, `${Code[error.code]}: ${error.rawMessage}`);
      } finally {
        watch.close();
      }
    });

    test("deadlines: the server ends a call at the protocol's deadline header", async () => {
      const { order } = await alice.registerOrder({ items: lineItems(), address: address() }, call);
      // No timeoutMs: no timer in the client, only the header, so the end is
      // the server's, with its details.
      const watch = follow(
        alice,
        { orderId: order.id },
        { timeoutMs: undefined, headers: protocol.deadline(300) },
      );
      try {
        assert.equal((await watch.next()).order.version, 1n);
        const error = await watch.end();
        assert.ok(error, 'the stream ended with OK');
        assert.equal(error.code, Code.DeadlineExceeded, `${Code[error.code]}: ${error.rawMessage}`);
        assert.equal(errorInfo(error).reason, 'DEADLINE_EXCEEDED');
      } finally {
        watch.close();
      }
    });
  });
}

// HTTP/1.1, as browsers behind an HTTP/1.1 ingress and clients that ask TLS
// for no protocol reach the port: the two protocols that work over it.
for (const protocol of PROTOCOLS.filter((p) => p.name !== 'gRPC')) {
  describe(`connect-node over ${protocol.name}, HTTP/1.1`, () => {
    const clientFor = (token) =>
      createClient(
        OrderService,
        protocol.transport({
          baseUrl,
          httpVersion: '1.1',
          nodeOptions: { ca },
          interceptors: [bearer(token)],
        }),
      );
    const alice = clientFor(tokens.alice);
    const staff = clientFor(tokens.staff);
    const call = { timeoutMs: TIMEOUT_MS };

    test('unary and server streaming, with the change staff make', async () => {
      const { order } = await alice.registerOrder({ items: lineItems(), address: address() }, call);
      assert.equal((await alice.getOrder({ orderId: order.id }, call)).id, order.id);
      const watch = follow(alice, { orderId: order.id });
      try {
        assert.equal((await watch.next()).order.version, 1n);
        await staff.advanceOrder({ orderId: order.id, expectedVersion: 1n }, call);
        assert.equal((await watch.next()).order.status, OrderStatus.CONFIRMED);
      } finally {
        watch.close();
      }
    });

    test('NOT_FOUND with ErrorInfo ORDER_NOT_FOUND', async () => {
      const error = await failure(
        alice.getOrder({ orderId: '0190a6b4-0000-7000-8000-000000000000' }, call),
        Code.NotFound,
      );
      assert.equal(errorInfo(error).reason, 'ORDER_NOT_FOUND');
    });
  });
}
