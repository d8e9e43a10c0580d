// Load of a Node @grpc/grpc-js client for the fault tests (tests/faults/foreign.rs).
//
// Loads the service from the repository's proto files with @grpc/proto-loader
// (--proto-dir, plus --platform-proto-dir for the access option orders.proto
// imports: the repository's platform/proto unless given), opens one TLS
// channel verified against the test CA and runs --concurrency workers for
// --duration seconds, each sending one unary call after another: RegisterOrder
// (a fresh UUID as request_id each time) or GetOrder of an order this process
// registered. The token comes from ORDERS_TOKEN; every call sends it as
// `authorization: Bearer`.
//
// No retries of its own: only what grpc-js does by itself (transparent retries
// of streams the server never processed). A failed call is counted, never sent
// again. SIGTERM (or the end of --duration) stops new calls; the calls in
// flight finish, then the summary is written to --out as JSON:
//   calls: method -> status code name -> count
//   failures: "CODE: details" -> count
//   failed_writes: every RegisterOrder that failed: request_id, code, details
//   connections: HTTP/2 connections opened
//   goaways: GOAWAY frames received, by HTTP/2 error code (a recycle or a
//     drain is two with code 0: "going away", then the last stream processed)
// "ready" is printed on stdout once the channel is connected and the load starts.
'use strict';

const http2 = require('node:http2');

// Every HTTP/2 session grpc-js opens (it calls http2.connect when it
// connects) is watched for GOAWAY frames: grpc-js itself reports only the
// first of a connection, and a GOAWAY with an error code follows the first.
// grpc-js removes all listeners of a session once its SETTINGS arrive, so
// ours is added just after that.
let connections = 0;
const goaways = {};
const connect = http2.connect;
http2.connect = function watchedConnect(...args) {
  const session = connect.apply(this, args);
  connections += 1;
  session.once('remoteSettings', () =>
    process.nextTick(() =>
      session.on('goaway', (code) => {
        goaways[code] = (goaways[code] || 0) + 1;
      }),
    ),
  );
  return session;
};

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const TIMEOUT_MS = 10_000;

const { values: args } = parseArgs({
  options: {
    target: { type: 'string' },
    authority: { type: 'string', default: 'localhost' },
    ca: { type: 'string' },
    'proto-dir': { type: 'string' },
    'platform-proto-dir': {
      type: 'string',
      default: path.resolve(__dirname, '../../../platform/proto'),
    },
    lb: { type: 'string', default: 'pick_first' },
    concurrency: { type: 'string', default: '32' },
    duration: { type: 'string' },
    'write-ratio': { type: 'string', default: '0.3' },
    out: { type: 'string' },
  },
});
for (const required of ['target', 'ca', 'proto-dir', 'duration', 'out']) {
  if (!args[required]) {
    console.error(`--${required} is required`);
    process.exit(2);
  }
}
const token = (process.env.ORDERS_TOKEN || '').trim();
if (!token) {
  console.error('ORDERS_TOKEN is not set');
  process.exit(2);
}

const statusName = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

const definition = protoLoader.loadSync('orders/v1/orders.proto', {
  includeDirs: [args['proto-dir'], args['platform-proto-dir']],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const OrderService = grpc.loadPackageDefinition(definition).orders.v1.OrderService;

const client = new OrderService(args.target, grpc.credentials.createSsl(fs.readFileSync(args.ca)), {
  'grpc.ssl_target_name_override': args.authority,
  'grpc.default_authority': args.authority,
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ [args.lb]: {} }] }),
  // A restarted replica is found again within a second.
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1000,
});
const metadata = new grpc.Metadata();
metadata.set('authorization', `Bearer ${token}`);

function call(method, request) {
  return new Promise((resolve) => {
    client[method](request, metadata, { deadline: Date.now() + TIMEOUT_MS }, (error, response) =>
      resolve({ error, response }),
    );
  });
}

const calls = {};
const failures = {};
const failedWrites = [];
const orders = [];
let stopping = false;

function count(method, code) {
  calls[method] = calls[method] || {};
  calls[method][code] = (calls[method][code] || 0) + 1;
}

function failed(method, error) {
  const code = statusName[error.code] || String(error.code);
  count(method, code);
  const key = `${code}: ${error.details}`;
  failures[key] = (failures[key] || 0) + 1;
  return code;
}

async function worker(n) {
  const writeRatio = Number(args['write-ratio']);
  let i = 0;
  while (!stopping) {
    i += 1;
    if (orders.length === 0 || Math.random() < writeRatio) {
      const request_id = crypto.randomUUID();
      const { error, response } = await call('RegisterOrder', {
        items: [{ sku: `SKU-${i % 1000}`, quantity: 1 + (i % 5), unit_price_cents: 250 }],
        address: { street: 'Main Street', number: 12, city: 'Utrecht', postal_code: '3511 AB' },
        request_id,
      });
      if (error) {
        const code = failed('RegisterOrder', error);
        failedWrites.push({ request_id, code, details: error.details });
        continue;
      }
      count('RegisterOrder', 'OK');
      orders.push(response.order_id);
    } else {
      const order_id = orders[Math.floor(Math.random() * orders.length)];
      const { error, response } = await call('GetOrder', { order_id });
      if (error) {
        failed('GetOrder', error);
        continue;
      }
      if (response.id !== order_id) {
        throw new Error(`GetOrder(${order_id}) answered order ${response.id} (worker ${n})`);
      }
      count('GetOrder', 'OK');
    }
  }
}

async function main() {
  await new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + 15_000, (e) => (e ? reject(e) : resolve())),
  );
  process.on('SIGTERM', () => {
    stopping = true;
  });
  const timer = setTimeout(() => {
    stopping = true;
  }, Number(args.duration) * 1000);
  console.log('ready');
  const started = process.hrtime.bigint();
  const workers = [];
  for (let n = 0; n < Number(args.concurrency); n++) workers.push(worker(n));
  await Promise.all(workers);
  clearTimeout(timer);
  const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
  client.close();
  const summary = {
    client: `@grpc/grpc-js ${require('@grpc/grpc-js/package.json').version}`,
    elapsed_secs: elapsed,
    calls,
    failures,
    failed_writes: failedWrites,
    connections,
    goaways,
  };
  fs.writeFileSync(`${args.out}.tmp`, JSON.stringify(summary));
  fs.renameSync(`${args.out}.tmp`, args.out);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
