'use strict';
// The rich errors (AIP-193) from @grpc/grpc-js: the google.rpc.Status in the
// grpc-status-details-bin trailer, decoded with google-proto-files' protos.

const assert = require('node:assert/strict');
const { test, after } = require('node:test');
const s = require('./support');

const { grpc } = s;
const client = s.ordersClient();
const { alice, readonly, anonymous } = s.callers();
after(() => client.close());

const call = (method, caller, request, extra) => s.unary(client, method, caller, request, extra);

/** The field paths of the error's single google.rpc.BadRequest, sorted. */
function badRequestPaths(error) {
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT, error.details);
  const badRequests = s.detailsOf(error, 'google.rpc.BadRequest');
  assert.equal(badRequests.length, 1, 'one google.rpc.BadRequest');
  for (const violation of badRequests[0].field_violations) {
    assert.ok(violation.description, `violation of ${violation.field} has no description`);
  }
  return badRequests[0].field_violations.map((v) => v.field).sort();
}

test('an invalid RegisterOrder reports every field violation in google.rpc.BadRequest', async () => {
  const request = {
    items: [
      { sku: 'lower-case', quantity: 0, unit_price_cents: -1 },
      { sku: s.newSku(), quantity: 1, unit_price_cents: 100 }, // valid
      { sku: '', quantity: 1001, unit_price_cents: 10_000_001 },
    ],
    address: { street: '', number: 1_000_001, city: 'x'.repeat(201), postal_code: '12345!' },
  };
  const error = await s.expectError(call('RegisterOrder', alice, request), grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(
    badRequestPaths(error),
    [
      'items[0].sku',
      'items[0].quantity',
      'items[0].unit_price_cents',
      'items[2].sku',
      'items[2].quantity',
      'items[2].unit_price_cents',
      'address.street',
      'address.number',
      'address.city',
      'address.postal_code',
    ].sort(),
  );
});

test('no items and no address are two violations', async () => {
  const error = await s.expectError(call('RegisterOrder', alice, {}), grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(badRequestPaths(error), ['address', 'items']);
});

test('no token is UNAUTHENTICATED with google.rpc.ErrorInfo', async () => {
  const error = await s.expectError(
    call('GetOrder', anonymous, { order_id: 'any' }),
    grpc.status.UNAUTHENTICATED,
  );
  const [info] = s.detailsOf(error, 'google.rpc.ErrorInfo');
  assert.ok(info, 'UNAUTHENTICATED without google.rpc.ErrorInfo');
  assert.equal(info.reason, 'MISSING_TOKEN');
});

test('a tampered token, sent as plain metadata, is UNAUTHENTICATED BAD_SIGNATURE', async () => {
  // alice's token claiming to be bob, with alice's signature. No call
  // credentials: the header is set by hand, as a client without them does.
  const [header, payload, signature] = alice.token.split('.');
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString());
  const asBob = Buffer.from(JSON.stringify({ ...claims, sub: 'bob' })).toString('base64url');
  const tampered = [header, asBob, signature].join('.');
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${tampered}`);
  const error = await s.expectError(
    call('ListOrders', anonymous, {}, { metadata }),
    grpc.status.UNAUTHENTICATED,
  );
  const [info] = s.detailsOf(error, 'google.rpc.ErrorInfo');
  assert.ok(info, 'UNAUTHENTICATED without google.rpc.ErrorInfo');
  assert.equal(info.reason, 'BAD_SIGNATURE');
  assert.ok(!error.details.includes(tampered), 'the error echoes the token');
  // The same metadata with the real token works.
  metadata.set('authorization', `Bearer ${alice.token}`);
  await call('ListOrders', anonymous, { page_size: 1 }, { metadata });
});

test('a missing scope is PERMISSION_DENIED, ErrorInfo MISSING_SCOPE with required_scope', async () => {
  const order = await s.register(client, alice);
  s.assertMissingScope(
    await s.expectError(call('RegisterOrder', readonly, s.registerRequest()), grpc.status.PERMISSION_DENIED),
    'orders:write',
  );
  s.assertMissingScope(
    await s.expectError(call('CancelOrder', readonly, { order_id: order.id }), grpc.status.PERMISSION_DENIED),
    'orders:write',
  );
  s.assertMissingScope(
    await s.expectError(
      s.updateOrder(client, readonly, [{ order_id: order.id, address: s.address(61) }]),
      grpc.status.PERMISSION_DENIED,
    ),
    'orders:write',
  );
  s.assertMissingScope(
    await s.expectError(call('AdvanceOrder', alice, { order_id: order.id }), grpc.status.PERMISSION_DENIED),
    'orders:admin',
  );
  // Reading needs only orders:read; nothing above changed the order.
  assert.deepEqual(await call('GetOrder', readonly, { order_id: order.id }), order);
});

test('a broken lifecycle rule is FAILED_PRECONDITION with google.rpc.PreconditionFailure', async () => {
  const order = await s.register(client, alice);
  await call('CancelOrder', alice, { order_id: order.id });
  const error = await s.expectError(
    call('CancelOrder', alice, { order_id: order.id }),
    grpc.status.FAILED_PRECONDITION,
  );
  const [failure] = s.detailsOf(error, 'google.rpc.PreconditionFailure');
  assert.ok(failure && failure.violations.length > 0, 'PreconditionFailure without violations');
});
