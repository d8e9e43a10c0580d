'use strict';
// The standard services on the main (TLS) port from @grpc/grpc-js, with no
// token: grpc.health.v1.Health (proto from grpc-health-check) and
// grpc.reflection.v1 / v1alpha ServerReflection (protos from @grpc/reflection).

const assert = require('node:assert/strict');
const { test, after } = require('node:test');
const s = require('./support');

const { grpc } = s;
const endpoint = s.env('ORDERS_ENDPOINT');
const health = new s.Health(endpoint, s.channelCredentials());
const reflection = {
  v1: new s.Reflection.v1(endpoint, s.channelCredentials()),
  v1alpha: new s.Reflection.v1alpha(endpoint, s.channelCredentials()),
};
after(() => {
  health.close();
  reflection.v1.close();
  reflection.v1alpha.close();
});

const deadline = () => ({ deadline: Date.now() + s.TIMEOUT_MS });

function check(service) {
  return new Promise((resolve, reject) => {
    health.Check({ service }, new grpc.Metadata(), deadline(), (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// --- health --------------------------------------------------------------------

for (const service of ['', 'readiness', 'liveness', 'orders.v1.OrderService']) {
  test(`Health.Check(${JSON.stringify(service)}) is SERVING without a token`, async () => {
    assert.deepEqual(await check(service), { status: 'SERVING' });
  });
}

test('Health.Check of an unknown service is NOT_FOUND', async () => {
  await s.expectError(check('no.such.Service'), grpc.status.NOT_FOUND);
});

test('Health.Watch sends SERVING, then stays open until cancelled', async () => {
  for (const service of ['', 'orders.v1.OrderService']) {
    const watch = new s.StreamReader(
      health.Watch({ service }, new grpc.Metadata(), { deadline: Date.now() + s.STREAM_TIMEOUT_MS }),
    );
    try {
      assert.deepEqual(await watch.next(), { status: 'SERVING' });
      watch.call.cancel();
      const error = await watch.failure();
      assert.equal(error.code, grpc.status.CANCELLED, error.details);
      assert.equal(watch.messages.length, 0, 'a second status while nothing changed');
    } finally {
      watch.close();
    }
  }
});

// --- reflection ----------------------------------------------------------------

/** One request on ServerReflectionInfo (`version`: v1 or v1alpha); its single answer. */
async function reflect(version, request) {
  const stream = new s.StreamReader(
    reflection[version].ServerReflectionInfo(new grpc.Metadata(), deadline()),
  );
  try {
    stream.call.write(request);
    stream.call.end();
    const responses = await stream.rest();
    assert.equal(responses.length, 1, 'one response per request');
    const [response] = responses;
    assert.notEqual(response.message_response, 'error_response', JSON.stringify(response.error_response));
    return response;
  } finally {
    stream.close();
  }
}

for (const version of ['v1', 'v1alpha']) {
  test(`reflection ${version} list_services names every service, both reflection versions included`, async () => {
    const response = await reflect(version, { list_services: '' });
    const names = response.list_services_response.service.map((sv) => sv.name).sort();
    for (const name of [
      'grpc.health.v1.Health',
      'grpc.reflection.v1.ServerReflection',
      'grpc.reflection.v1alpha.ServerReflection',
      'orders.v1.OrderService',
    ]) {
      assert.ok(names.includes(name), `${name} missing from ${version} list_services: ${names}`);
    }
  });

  test(`reflection ${version} describes orders.v1.OrderService`, async () => {
    const response = await reflect(version, { file_containing_symbol: 'orders.v1.OrderService' });
    const files = response.file_descriptor_response.file_descriptor_proto.map((bytes) =>
      s.FileDescriptorProto.decode(bytes),
    );
    const services = files
      .filter((f) => f.package === 'orders.v1')
      .flatMap((f) => f.service)
      .filter((sv) => sv.name === 'OrderService');
    assert.equal(services.length, 1);
    const streaming = Object.fromEntries(
      services[0].method.map((m) => [m.name, [Boolean(m.clientStreaming), Boolean(m.serverStreaming)]]),
    );
    assert.deepEqual(streaming, {
      RegisterOrder: [false, false],
      GetOrder: [false, false],
      ListOrders: [false, false],
      CancelOrder: [false, false],
      AdvanceOrder: [false, false],
      UpdateOrder: [true, false],
      WatchOrder: [false, true],
      TrackOrders: [true, true],
    });
  });
}
