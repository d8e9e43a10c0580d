// The order-tracking page's script: registers an order with RegisterOrder,
// then follows it with WatchOrder and shows each version as it arrives.
// Errors are shown as the service sends them: the code, the message, and the
// google.rpc details a person can act on (ErrorInfo's reason and metadata,
// BadRequest's field violations).
//
// The messages and the service are protoc-gen-es's code (src/gen, made from
// the repository's protos by `npm run generate`); the transport is
// connect-web's, Connect or gRPC-Web, over the browser's fetch.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb";
import { type Order, OrderService, OrderStatus } from "./gen/orders/v1/orders_pb";

type OrderClient = Client<typeof OrderService>;

const REGISTER_TIMEOUT_MS = 10_000;
// A watch that ends UNAVAILABLE (the server drained, recycled the connection
// or reached its stream time limit) is resumed after the last version shown;
// this many times in a row without an event in between.
const RESUME_ATTEMPTS = 5;

function element<T extends HTMLElement = HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page has no #${id}`);
  return found as T;
}

const field = (id: string) => element<HTMLInputElement>(id).value.trim();

/** The API base URL and protocol from the query (?api=…&protocol=grpc-web). */
function initialise(): void {
  const query = new URLSearchParams(location.search);
  element<HTMLInputElement>("api").value = query.get("api") ?? location.origin;
  if (query.get("protocol") === "grpc-web") {
    element<HTMLSelectElement>("protocol").value = "grpc-web";
  }
  element<HTMLFormElement>("form").addEventListener("submit", (event) => {
    event.preventDefault();
    void register();
  });
}

function client(): OrderClient {
  const baseUrl = field("api").replace(/\/+$/, "");
  const token = element<HTMLTextAreaElement>("token").value.trim();
  const bearer: Interceptor = (next) => (request) => {
    if (token) request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const options = { baseUrl, interceptors: [bearer] };
  const transport =
    element<HTMLSelectElement>("protocol").value === "grpc-web"
      ? createGrpcWebTransport(options)
      : createConnectTransport(options);
  return createClient(OrderService, transport);
}

// --- errors -------------------------------------------------------------------

/** gRPC's name of a code: PERMISSION_DENIED for Code.PermissionDenied. */
function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function showError(cause: unknown): void {
  const error = ConnectError.from(cause);
  element("error-code").textContent = codeName(error.code);
  element("error-message").textContent = error.rawMessage;
  const list = element("error-details");
  list.replaceChildren();
  const item = (text: string) => {
    const li = document.createElement("li");
    li.textContent = text;
    list.append(li);
  };
  if (error.code === Code.Unknown && error.cause instanceof TypeError) {
    // fetch() failed before any answer; a browser does not tell a page why.
    item(
      "no answer: the service is down or unreachable, the browser does not trust its " +
        "certificate, or it does not list this page's origin in cors.allowed_origins",
    );
  }
  for (const info of error.findDetails(ErrorInfoSchema)) {
    item(`reason ${info.reason} (${info.domain})`);
    for (const [key, value] of Object.entries(info.metadata)) item(`${key}: ${value}`);
  }
  for (const bad of error.findDetails(BadRequestSchema)) {
    for (const violation of bad.fieldViolations) item(`${violation.field}: ${violation.description}`);
  }
  element("error").hidden = false;
}

function clearError(): void {
  element("error").hidden = true;
}

// --- the order ----------------------------------------------------------------

const statusName = (status: OrderStatus) => OrderStatus[status] ?? String(status);

/** Shows one version of the order; each version is listed once. */
function showOrder(order: Order): void {
  element("order").hidden = false;
  element("order-id").textContent = order.id;
  element("status").textContent = statusName(order.status);
  element("version").textContent = String(order.version);
  const events = element("events");
  const id = `version-${order.version}`;
  if (!document.getElementById(id)) {
    const li = document.createElement("li");
    li.id = id;
    const when = order.updateTime ? timestampDate(order.updateTime).toLocaleTimeString() : "";
    li.textContent = `v${order.version} ${statusName(order.status)} ${when}`;
    events.append(li);
  }
}

const setStream = (text: string) => {
  element("stream").textContent = text;
};

let watching: AbortController | undefined;

/**
 * Follows the order until it is final, resuming after the last version
 * shown when the server ends the stream UNAVAILABLE.
 */
async function watch(orders: OrderClient, orderId: string): Promise<void> {
  watching?.abort();
  const controller = new AbortController();
  watching = controller;
  let after = 0n;
  for (let attempts = 0; ; attempts++) {
    setStream(attempts === 0 ? "connecting" : "reconnecting");
    try {
      const stream = orders.watchOrder(
        { orderId, afterVersion: after },
        { signal: controller.signal },
      );
      for await (const event of stream) {
        if (!event.order) continue;
        showOrder(event.order);
        after = event.order.version;
        attempts = 0;
        setStream("live");
      }
      setStream("ended: the order is final");
      return;
    } catch (cause) {
      if (controller.signal.aborted) return;
      const error = ConnectError.from(cause);
      if (error.code === Code.Unavailable && attempts < RESUME_ATTEMPTS) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        continue;
      }
      setStream("stopped");
      showError(error);
      return;
    }
  }
}

async function register(): Promise<void> {
  clearError();
  const orders = client();
  const button = element<HTMLButtonElement>("register");
  button.disabled = true;
  try {
    const { order } = await orders.registerOrder(
      {
        items: [
          {
            sku: field("sku"),
            quantity: Number(field("quantity")),
            unitPriceCents: BigInt(field("price") || "0"),
          },
        ],
        address: {
          street: field("street"),
          number: BigInt(field("number") || "0"),
          city: field("city"),
          postalCode: field("postal-code"),
        },
      },
      { timeoutMs: REGISTER_TIMEOUT_MS },
    );
    if (!order) throw new ConnectError("the answer has no order", Code.Internal);
    element("events").replaceChildren();
    showOrder(order);
    void watch(orders, order.id);
  } catch (cause) {
    showError(cause);
  } finally {
    button.disabled = false;
  }
}

initialise();
