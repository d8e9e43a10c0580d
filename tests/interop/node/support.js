'use strict';
// Shared set-up of the Node interop tests (the *.test.js files beside this one,
// run with `node --test` by tests/interop.rs against the real TLS server).
//
// Everything is loaded at run time from proto files: the service from the
// repository's proto/ (ORDERS_PROTO_DIR) with the access option it imports from
// platform/proto/ (PLATFORM_PROTO_DIR), google.rpc.Status and its details
// from google-proto-files, health from grpc-health-check and reflection from
// @grpc/reflection (the grpc-node project's own packages, which ship the
// standard protos). Every call has a deadline and every wait on a stream has a
// timeout: nothing can hang.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtoFiles = require('google-proto-files');

// Deadline of a unary call; streams get STREAM_TIMEOUT_MS as a whole.
const TIMEOUT_MS = 10_000;
const STREAM_TIMEOUT_MS = 30_000;
// How long to wait for one stream message or for a stream to end.
const WAIT_MS = 10_000;

const REQUIRED_ENV = {
  ORDERS_ENDPOINT: 'host:port of the server under test (TLS), with the host the certificate names',
  ORDERS_CA_CERT: 'path of the PEM CA certificate that signed the server certificate',
  ORDERS_TOKEN: 'JWT for customer alice, scopes orders:read orders:write',
  ORDERS_TOKEN_BOB: 'JWT for customer bob, scopes orders:read orders:write',
  ORDERS_TOKEN_STAFF: 'JWT for staff, scopes orders:read orders:write orders:admin',
  ORDERS_TOKEN_READONLY: 'JWT for customer alice, scope orders:read only',
  ORDERS_ADMIN_ADDR: 'host:port of the plaintext admin port (GET /metrics)',
};

function env(name) {
  const value = (process.env[name] || '').trim();
  if (!value) {
    throw new Error(
      `environment variable ${name} is not set (${REQUIRED_ENV[name] || ''}); ` +
        'the Node interop suite is run by the Rust integration test, which sets it',
    );
  }
  return value;
}

// --- protos --------------------------------------------------------------------

const PROTO_DIR = process.env.ORDERS_PROTO_DIR || path.resolve(__dirname, '../../../proto');
// orders.proto imports grpc_platform/v1/access.proto from here; its
// google/protobuf/descriptor.proto is proto-loader's own.
const PLATFORM_PROTO_DIR =
  process.env.PLATFORM_PROTO_DIR || path.resolve(__dirname, '../../../platform/proto');

// Where a package's files are (none of these packages has an `exports` map).
function packageDir(name) {
  return path.dirname(require.resolve(`${name}/package.json`));
}

const LOADER_OPTIONS = {
  keepCase: true, // field names as in the proto: order_id, not orderId
  longs: Number, // int64 values here (versions, cents, numbers) are far below 2^53
  enums: String,
  defaults: true, // absent fields read as their defaults, so whole messages compare
  oneofs: true,
};

function loadServices() {
  const healthProto = path.join(packageDir('grpc-health-check'), 'proto/health/v1/health.proto');
  const reflectionDir = path.join(packageDir('@grpc/reflection'), 'build/proto');
  const definition = protoLoader.loadSync(
    [
      'orders/v1/orders.proto',
      healthProto,
      'grpc/reflection/v1/reflection.proto',
      'grpc/reflection/v1alpha/reflection.proto',
    ],
    { ...LOADER_OPTIONS, includeDirs: [PROTO_DIR, PLATFORM_PROTO_DIR, reflectionDir] },
  );
  return grpc.loadPackageDefinition(definition);
}

const services = loadServices();
const OrderService = services.orders.v1.OrderService;
const Health = services.grpc.health.v1.Health;
const Reflection = {
  v1: services.grpc.reflection.v1.ServerReflection,
  v1alpha: services.grpc.reflection.v1alpha.ServerReflection,
};

// google.rpc.Status and the standard error details, to decode the
// grpc-status-details-bin trailer.
const rpcRoot = (() => {
  const root = new protobuf.Root();
  const base = googleProtoFiles.getProtoPath('..');
  root.resolvePath = (_origin, target) => {
    // The well-known types (google/protobuf/any.proto, duration.proto) are
    // protobufjs's own; the rest comes from google-proto-files.
    if (target.startsWith('google/protobuf/')) return target;
    return path.isAbsolute(target) ? target : path.join(base, target);
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return root;
})();

// google.protobuf.FileDescriptorProto, to read what reflection returns.
const { FileDescriptorProto } = require('protobufjs/ext/descriptor');

// --- channel and callers -------------------------------------------------------

function channelCredentials() {
  return grpc.credentials.createSsl(fs.readFileSync(env('ORDERS_CA_CERT')));
}

/** A new OrderService client (its own channel unless `options` match another's). */
function ordersClient(options = {}) {
  return new OrderService(env('ORDERS_ENDPOINT'), channelCredentials(), options);
}

/** One identity: its token, sent as `authorization: Bearer` by call credentials. */
class Caller {
  constructor(name, token) {
    this.name = name;
    this.token = token;
    this.credentials = token
      ? grpc.credentials.createFromMetadataGenerator((_params, callback) => {
          const metadata = new grpc.Metadata();
          metadata.set('authorization', `Bearer ${token}`);
          callback(null, metadata);
        })
      : null;
  }

  /** The token's `sub` (read unverified: only to learn whom it was made for). */
  get subject() {
    const payload = this.token.split('.')[1];
    return JSON.parse(Buffer.from(payload, 'base64url').toString()).sub;
  }
}

function callers() {
  return {
    alice: new Caller('alice', env('ORDERS_TOKEN')),
    bob: new Caller('bob', env('ORDERS_TOKEN_BOB')),
    staff: new Caller('staff', env('ORDERS_TOKEN_STAFF')),
    readonly: new Caller('alice (read-only)', env('ORDERS_TOKEN_READONLY')),
    anonymous: new Caller('anonymous', ''),
  };
}

function callOptions(caller, timeoutMs, extra = {}) {
  const options = { deadline: Date.now() + timeoutMs, ...extra };
  if (caller && caller.credentials) options.credentials = caller.credentials;
  return options;
}

/** A unary call as a promise: resolves with the response, rejects with the grpc-js error. */
function unary(client, method, caller, request, { metadata = new grpc.Metadata(), ...extra } = {}) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, callOptions(caller, TIMEOUT_MS, extra), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/**
 * A client-streaming UpdateOrder: writes `requests`, half-closes, and resolves
 * with the response (rejects with the error).
 */
function updateOrder(client, caller, requests, extra = {}) {
  return new Promise((resolve, reject) => {
    const call = client.UpdateOrder(
      new grpc.Metadata(),
      callOptions(caller, STREAM_TIMEOUT_MS, extra),
      (error, response) => (error ? reject(error) : resolve(response)),
    );
    for (const request of requests) call.write(request);
    call.end();
  });
}

/**
 * Reads a response stream (server or bidi streaming) as it comes, so a test
 * can make changes meanwhile and wait for each message with a timeout.
 */
class StreamReader {
  constructor(call) {
    this.call = call;
    this.messages = [];
    this.waiters = [];
    this.error = null;
    this.status = null;
    this.ended = false;
    call.on('data', (message) => {
      this.messages.push(message);
      this.wake();
    });
    call.on('error', (error) => {
      this.error = error;
    });
    // 'status' comes last, after the error or the end of the data.
    call.on('status', (status) => {
      this.status = status;
      this.ended = true;
      this.wake();
    });
  }

  wake() {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  async until(condition, what) {
    const deadline = Date.now() + WAIT_MS;
    while (!condition()) {
      const left = deadline - Date.now();
      if (left <= 0) assert.fail(`no ${what} within ${WAIT_MS} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  ending() {
    return this.error ? `${grpc.status[this.error.code]}: ${this.error.details}` : 'OK';
  }

  /** The next message; fails if none comes within WAIT_MS or the stream ended. */
  async next() {
    await this.until(() => this.messages.length > 0 || this.ended, 'stream message');
    if (this.messages.length === 0) assert.fail(`stream ended early: ${this.ending()}`);
    return this.messages.shift();
  }

  /** The messages left until the stream ends, which it must do with OK within WAIT_MS. */
  async rest() {
    await this.until(() => this.ended, 'end of the stream');
    assert.equal(this.error, null, `stream failed: ${this.ending()}`);
    assert.equal(this.status.code, grpc.status.OK);
    return this.messages.splice(0);
  }

  /** The error the stream ends with, within WAIT_MS. */
  async failure() {
    await this.until(() => this.ended, 'end of the stream');
    assert.notEqual(this.error, null, 'the stream ended with OK');
    return this.error;
  }

  /** Cancels the call if it is still open (for `finally` blocks). */
  close() {
    if (!this.ended) this.call.cancel();
  }
}

function watchOrder(client, caller, request, extra = {}) {
  return new StreamReader(
    client.WatchOrder(request, new grpc.Metadata(), callOptions(caller, STREAM_TIMEOUT_MS, extra)),
  );
}

function trackOrders(client, caller, extra = {}) {
  return new StreamReader(
    client.TrackOrders(new grpc.Metadata(), callOptions(caller, STREAM_TIMEOUT_MS, extra)),
  );
}

// --- errors --------------------------------------------------------------------

/** Awaits `promise`, which must fail with `code`; returns the error. */
async function expectError(promise, code) {
  let error;
  try {
    const value = await promise;
    assert.fail(`expected ${grpc.status[code]}, got a response: ${JSON.stringify(value)}`);
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    error = e;
  }
  assert.equal(
    error.code,
    code,
    `expected ${grpc.status[code]}, got ${grpc.status[error.code]}: ${error.details}`,
  );
  return error;
}

/**
 * The google.rpc.Status of an error, decoded from its grpc-status-details-bin
 * trailer, with each detail unpacked: [{type: 'google.rpc.BadRequest', value}].
 */
function statusDetails(error) {
  const raw = error.metadata.get('grpc-status-details-bin');
  assert.equal(raw.length, 1, `${grpc.status[error.code]} carries no grpc-status-details-bin`);
  const Status = rpcRoot.lookupType('google.rpc.Status');
  const status = Status.toObject(Status.decode(raw[0]), { defaults: true });
  // The Status repeats what grpc-status and grpc-message say.
  assert.equal(status.code, error.code, 'google.rpc.Status code differs from grpc-status');
  assert.equal(status.message, error.details, 'google.rpc.Status message differs from grpc-message');
  return status.details.map((any) => {
    const type = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    const Type = rpcRoot.lookupType(type);
    return { type, value: Type.toObject(Type.decode(any.value), { defaults: true }) };
  });
}

/** The details of one type (e.g. 'google.rpc.ErrorInfo') in the error's Status. */
function detailsOf(error, type) {
  return statusDetails(error)
    .filter((d) => d.type === type)
    .map((d) => d.value);
}

function assertMissingScope(error, scope) {
  assert.equal(error.code, grpc.status.PERMISSION_DENIED, error.details);
  const [info, ...more] = detailsOf(error, 'google.rpc.ErrorInfo');
  assert.ok(info, 'PERMISSION_DENIED without google.rpc.ErrorInfo');
  assert.equal(more.length, 0);
  assert.equal(info.reason, 'MISSING_SCOPE');
  assert.equal(info.metadata.required_scope, scope);
}

// --- test data -----------------------------------------------------------------

let skuCounter = 0;
/** A SKU no other test uses, so an order can be told apart in listings. */
function newSku() {
  skuCounter += 1;
  const random = Math.random().toString(36).slice(2, 10).toUpperCase();
  return `NODE-${process.pid}-${skuCounter}-${random}`;
}

function lineItems() {
  return [
    { sku: newSku(), quantity: 2, unit_price_cents: 1250 },
    { sku: newSku(), quantity: 3, unit_price_cents: 199 },
  ];
}
const LINE_ITEMS_TOTAL = 2 * 1250 + 3 * 199;

function address(n = 1, fields = {}) {
  return {
    street: 'Main Street',
    number: n,
    city: 'Springfield',
    postal_code: String(n).padStart(5, '0'),
    ...fields,
  };
}

function registerRequest(fields = {}) {
  return { items: lineItems(), address: address(), request_id: '', ...fields };
}

async function register(client, caller, fields = {}) {
  return (await unary(client, 'RegisterOrder', caller, registerRequest(fields))).order;
}

/** (id, version, status) of each event: readable in assertion diffs. */
function summary(events) {
  return events.map((e) => [e.order.id, e.order.version, e.order.status]);
}

// --- the admin port ------------------------------------------------------------

/** The Prometheus text of GET http://ADMIN/metrics. */
async function metricsText() {
  const response = await fetch(`http://${env('ORDERS_ADMIN_ADDR')}/metrics`, {
    signal: AbortSignal.timeout(WAIT_MS),
  });
  assert.equal(response.status, 200, 'GET /metrics');
  return response.text();
}

/**
 * Every sample of `name` whose labels include `labels`, as
 * [{labels: {...}, value}] (exposition format: name{k="v",...} value).
 */
function samples(text, name, labels = {}) {
  const found = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.startsWith(`${name}{`)) continue;
    const close = line.lastIndexOf('}');
    const own = {};
    // Label values here are plain names (no escaped quotes).
    for (const match of line.slice(name.length + 1, close).matchAll(/(\w+)="([^"]*)"/g)) {
      own[match[1]] = match[2];
    }
    if (Object.entries(labels).every(([k, v]) => own[k] === v)) {
      found.push({ labels: own, value: Number(line.slice(close + 1).trim()) });
    }
  }
  return found;
}

/** Polls until `check()` resolves truthy, or fails after `ms` saying `what`. */
async function eventually(check, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const result = await check();
    if (result) return result;
    if (Date.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

module.exports = {
  grpc,
  TIMEOUT_MS,
  STREAM_TIMEOUT_MS,
  WAIT_MS,
  env,
  services,
  OrderService,
  Health,
  Reflection,
  FileDescriptorProto,
  channelCredentials,
  ordersClient,
  Caller,
  callers,
  callOptions,
  unary,
  updateOrder,
  StreamReader,
  watchOrder,
  trackOrders,
  expectError,
  statusDetails,
  detailsOf,
  assertMissingScope,
  newSku,
  lineItems,
  LINE_ITEMS_TOTAL,
  address,
  registerRequest,
  register,
  summary,
  metricsText,
  samples,
  eventually,
};
