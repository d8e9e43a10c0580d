//! The Connect protocol (connectrpc.com/docs/protocol), served by turning
//! each Connect call into the gRPC call it means and its gRPC answer back
//! into Connect's, so every layer of the stack (auth, quotas, limits,
//! deadlines, metrics, the access log) and every handler see a gRPC call,
//! with one policy for all three protocols.
//!
//! What is served:
//! - unary calls, `application/json` or `application/proto`, answered with
//!   the message itself (HTTP 200) or a Connect error: the code as its
//!   string, the message, and the `google.rpc.Status` details each as
//!   `{"type", "value"}` (base64 of the message), with the HTTP status
//!   Connect maps the code to;
//! - streaming calls, `application/connect+json` or
//!   `application/connect+proto`: enveloped messages both ways, ending with
//!   an end-of-stream envelope carrying the error (if any) and the trailers.
//!
//! JSON is the proto3 JSON mapping, made from the service's own descriptors
//! (`prost-reflect`), so a service needs nothing but its proto. What is
//! not served: GET requests and compressed Connect bodies (a client that
//! sends `content-encoding: gzip` gets `unimplemented`).
//!
//! The request is turned into gRPC lazily, as the stack below reads its
//! body: a Connect call without a valid token is refused by auth before
//! any JSON is parsed, as a gRPC call is. A body larger than the method's
//! limit allows (four times it for JSON, which spells bytes and escapes at
//! length) is refused as it arrives.
//!
//! Hand-written: the maintained Rust implementation of Connect
//! (`connectrpc`) brings its own code generator and message types, not
//! tonic's and prost's, so it cannot serve the services this platform
//! mounts; the translation is small next to that.

use crate::methods::{MethodTable, RpcKind};
use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::{BoxFuture, Either};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The end-of-stream flag of a Connect envelope.
const END_STREAM: u8 = 0x02;
/// The compressed flag of an envelope (gRPC's and Connect's).
const COMPRESSED: u8 = 0x01;

/// What the Connect layer knows of one method.
#[derive(Debug, Clone)]
struct ConnectMethod {
    input: MessageDescriptor,
    output: MessageDescriptor,
    kind: RpcKind,
    /// The largest request message, in bytes of protobuf.
    limit: usize,
}

/// Every method Connect clients may call, by path, with its message types.
#[derive(Debug, Default)]
pub struct ConnectMethods {
    by_path: HashMap<String, ConnectMethod>,
}

impl ConnectMethods {
    /// The methods of `table`'s services found in `descriptor_sets` (each
    /// an encoded file descriptor set, as services are mounted with);
    /// `default_limit` is a method's request limit where it declares none.
    pub fn new(table: &MethodTable, descriptor_sets: &[&[u8]], default_limit: u32) -> Self {
        let pools: Vec<DescriptorPool> = descriptor_sets
            .iter()
            .filter_map(|set| DescriptorPool::decode(*set).ok())
            .collect();
        let mut by_path = HashMap::new();
        for method in table.methods() {
            let Some(descriptor) = pools.iter().find_map(|pool| {
                pool.get_service_by_name(&method.service)?
                    .methods()
                    .find(|m| m.name() == &*method.name)
            }) else {
                continue;
            };
            by_path.insert(
                format!("/{}/{}", method.service, method.name),
                ConnectMethod {
                    input: descriptor.input(),
                    output: descriptor.output(),
                    kind: method.kind,
                    limit: method.max_request_bytes.unwrap_or(default_limit) as usize,
                },
            );
        }
        Self { by_path }
    }
}

/// How a request speaks Connect, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Unary { json: bool },
    Stream { json: bool },
}

impl Shape {
    fn of(request: &http::Request<tonic::body::Body>) -> Option<Self> {
        if request.method() != http::Method::POST {
            return None;
        }
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)?
            .to_str()
            .ok()?;
        let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Some(Shape::Unary { json: true }),
            "application/proto" => Some(Shape::Unary { json: false }),
            "application/connect+json" => Some(Shape::Stream { json: true }),
            "application/connect+proto" => Some(Shape::Stream { json: false }),
            _ => None,
        }
    }

    fn json(self) -> bool {
        match self {
            Shape::Unary { json } | Shape::Stream { json } => json,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ConnectLayer {
    methods: Arc<ConnectMethods>,
}

impl ConnectLayer {
    pub(crate) fn new(methods: Arc<ConnectMethods>) -> Self {
        Self { methods }
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = Connect<S>;

    fn layer(&self, inner: S) -> Connect<S> {
        Connect {
            inner,
            methods: self.methods.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Connect<S> {
    inner: S,
    methods: Arc<ConnectMethods>,
}

impl<S> Service<http::Request<tonic::body::Body>> for Connect<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let Some(shape) = Shape::of(&request) else {
            return Either::Left(self.inner.call(request));
        };
        let method = self.methods.by_path.get(request.uri().path()).cloned();
        let json = shape.json();
        // A compressed body is not understood: say so rather than guess.
        let encoding = match shape {
            Shape::Unary { .. } => "content-encoding",
            Shape::Stream { .. } => "connect-content-encoding",
        };
        if let Some(value) = request.headers().get(encoding)
            && value.as_bytes() != b"identity"
        {
            let status = Status::unimplemented(format!(
                "{encoding} {:?} is not supported; send the body uncompressed",
                String::from_utf8_lossy(value.as_bytes())
            ));
            return Either::Right(Box::pin(futures::future::ready(Ok(error_response(
                shape,
                &status,
                HeaderMap::new(),
            )))));
        }
        if let Some(method) = &method {
            let unary = method.kind == RpcKind::Unary;
            if unary != matches!(shape, Shape::Unary { .. }) {
                let status = Status::unimplemented(if unary {
                    "a unary method: call it with application/json or application/proto"
                } else {
                    "a streaming method: call it with application/connect+json or application/connect+proto"
                });
                return Either::Right(Box::pin(futures::future::ready(Ok(error_response(
                    shape,
                    &status,
                    HeaderMap::new(),
                )))));
            }
        }
        let request = to_grpc(request, shape, method.clone());
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let call = inner.call(request);
        Either::Right(Box::pin(async move {
            let response = call.await?;
            Ok(match shape {
                Shape::Unary { .. } => unary_response(response, json, method).await,
                Shape::Stream { .. } => stream_response(response, json, method),
            })
        }))
    }
}

/// The gRPC request a Connect request means.
fn to_grpc(
    request: http::Request<tonic::body::Body>,
    shape: Shape,
    method: Option<ConnectMethod>,
) -> http::Request<tonic::body::Body> {
    let (mut parts, body) = request.into_parts();
    // What the call means is a gRPC call, which is HTTP/2 whatever the
    // connection under this one speaks.
    parts.version = http::Version::HTTP_2;
    let headers = &mut parts.headers;
    if let Some(ms) = headers
        .remove("connect-timeout-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        // gRPC's unit suffix m: milliseconds, at most eight digits.
        let value = format!("{}m", ms.min(99_999_999));
        headers.insert(
            "grpc-timeout",
            HeaderValue::from_str(&value).expect("ascii"),
        );
    }
    headers.remove(http::header::CONTENT_LENGTH);
    headers.remove("connect-protocol-version");
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc+proto"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    let body = RequestBody {
        inner: body,
        shape,
        method,
        buffer: BytesMut::new(),
        done: false,
    };
    http::Request::from_parts(parts, tonic::body::Body::new(body))
}

/// A Connect request body read as the gRPC body it means: one framed
/// message for a unary call, each envelope's message framed for a stream,
/// JSON turned into protobuf on the way.
struct RequestBody {
    inner: tonic::body::Body,
    shape: Shape,
    /// `None`: a path no service serves; an empty message is sent, which
    /// the stack answers (a token first, then UNIMPLEMENTED).
    method: Option<ConnectMethod>,
    buffer: BytesMut,
    done: bool,
}

impl RequestBody {
    /// The most raw bytes one message may take before it is refused.
    fn cap(&self) -> usize {
        let limit = self.method.as_ref().map_or(4096, |m| m.limit);
        if self.shape.json() {
            limit.saturating_mul(4).saturating_add(1024)
        } else {
            limit.saturating_add(5)
        }
    }

    /// `payload` (JSON or protobuf) as one gRPC frame.
    fn framed(&self, payload: &[u8]) -> Result<Bytes, Status> {
        let proto = match (&self.method, self.shape.json()) {
            (None, _) => Vec::new(),
            (Some(method), true) => from_json(&method.input, payload)?,
            (Some(_), false) => payload.to_vec(),
        };
        let mut framed = BytesMut::with_capacity(proto.len() + 5);
        framed.put_u8(0);
        framed.put_u32(proto.len() as u32);
        framed.extend_from_slice(&proto);
        Ok(framed.freeze())
    }

    /// The next whole envelope in the buffer, as a gRPC frame.
    fn next_envelope(&mut self) -> Option<Result<Bytes, Status>> {
        if self.buffer.len() < 5 {
            return None;
        }
        let flags = self.buffer[0];
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if len + 5 > self.cap() {
            return Some(Err(too_large(len, self.cap())));
        }
        if self.buffer.len() < len + 5 {
            return None;
        }
        if flags & COMPRESSED != 0 {
            return Some(Err(Status::unimplemented(
                "compressed Connect envelopes are not supported",
            )));
        }
        if flags & END_STREAM != 0 {
            return Some(Err(Status::invalid_argument(
                "a request stream does not carry an end-of-stream envelope",
            )));
        }
        let envelope = self.buffer.split_to(len + 5);
        Some(self.framed(&envelope[5..]))
    }
}

fn too_large(len: usize, cap: usize) -> Status {
    Status::resource_exhausted(format!(
        "request body of {len} bytes is over the method's limit ({cap} bytes in this encoding)"
    ))
}

fn from_json(descriptor: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, Status> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)
        .and_then(|message| deserializer.end().map(|()| message))
        .map_err(|e| {
            Status::invalid_argument(format!(
                "the body is not a JSON {}: {e}",
                descriptor.full_name()
            ))
        })?;
    Ok(message.encode_to_vec())
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Shape::Stream { .. } = this.shape
                && let Some(envelope) = this.next_envelope()
            {
                if envelope.is_err() {
                    this.done = true;
                }
                return Poll::Ready(Some(envelope.map(Frame::data)));
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.buffer.extend_from_slice(&data);
                        if matches!(this.shape, Shape::Unary { .. })
                            && this.buffer.len() > this.cap()
                        {
                            this.done = true;
                            let status = too_large(this.buffer.len(), this.cap());
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                }
                Some(Err(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.done = true;
                    return match this.shape {
                        Shape::Unary { .. } => {
                            let payload = std::mem::take(&mut this.buffer);
                            Poll::Ready(Some(this.framed(&payload).map(Frame::data)))
                        }
                        Shape::Stream { .. } if this.buffer.is_empty() => Poll::Ready(None),
                        Shape::Stream { .. } => Poll::Ready(Some(Err(Status::invalid_argument(
                            "the request stream ends inside an envelope",
                        )))),
                    };
                }
            }
        }
    }
}

/// The HTTP status Connect gives each code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("valid"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Connect's name of a code: gRPC's, in snake case (`canceled` with one l).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// A Connect error's JSON: the code, the message, and each detail of the
/// status as its type's full name and its bytes in base64.
fn error_json(status: &Status) -> serde_json::Value {
    let mut error = serde_json::json!({ "code": code_name(status.code()) });
    if !status.message().is_empty() {
        error["message"] = status.message().into();
    }
    let details: Vec<serde_json::Value> = tonic_types::pb::Status::decode(status.details())
        .map(|rich| rich.details)
        .unwrap_or_default()
        .into_iter()
        .map(|any| {
            let name = any
                .type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            serde_json::json!({
                "type": name,
                "value": base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value),
            })
        })
        .collect();
    if !details.is_empty() {
        error["details"] = details.into();
    }
    error
}

/// Headers a gRPC answer carries that are the protocol's own, not the
/// call's metadata.
fn is_protocol_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("grpc-")
        || matches!(
            name,
            "content-type" | "content-length" | "te" | "trailer" | "transfer-encoding"
        )
}

/// The call's metadata among `headers`.
fn metadata(headers: &HeaderMap) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    headers.iter().filter(|(name, _)| !is_protocol_header(name))
}

fn json_body(value: &serde_json::Value) -> tonic::body::Body {
    tonic::body::Body::new(http_body_util::Full::new(Bytes::from(value.to_string())))
}

/// A Connect error answer: for a unary call the error JSON with its HTTP
/// status; for a stream HTTP 200 and one end-of-stream envelope.
fn error_response(
    shape: Shape,
    status: &Status,
    call_metadata: HeaderMap,
) -> http::Response<tonic::body::Body> {
    let (http_status, content_type, body) = match shape {
        Shape::Unary { .. } => (
            http_status(status.code()),
            "application/json",
            json_body(&error_json(status)),
        ),
        Shape::Stream { json } => (
            StatusCode::OK,
            if json {
                "application/connect+json"
            } else {
                "application/connect+proto"
            },
            tonic::body::Body::new(http_body_util::Full::new(end_of_stream(
                Some(status),
                &HeaderMap::new(),
            ))),
        ),
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = http_status;
    let headers = response.headers_mut();
    headers.extend(call_metadata);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// Connect's end-of-stream envelope: the error, if any, and the trailers.
fn end_of_stream(status: Option<&Status>, trailers: &HeaderMap) -> Bytes {
    let mut end = serde_json::json!({});
    if let Some(status) = status.filter(|s| s.code() != Code::Ok) {
        end["error"] = error_json(status);
    }
    let mut fields = serde_json::Map::new();
    for (name, value) in metadata(trailers) {
        if let Ok(value) = value.to_str() {
            let entry = fields
                .entry(name.as_str())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(values) = entry {
                values.push(value.into());
            }
        }
    }
    if !fields.is_empty() {
        end["metadata"] = fields.into();
    }
    let json = end.to_string();
    let mut envelope = BytesMut::with_capacity(json.len() + 5);
    envelope.put_u8(END_STREAM);
    envelope.put_u32(json.len() as u32);
    envelope.extend_from_slice(json.as_bytes());
    envelope.freeze()
}

/// A response message from protobuf to what the client asked for.
fn encode_output(
    method: Option<&ConnectMethod>,
    json: bool,
    proto: &[u8],
) -> Result<Vec<u8>, Status> {
    if !json {
        return Ok(proto.to_vec());
    }
    let method = method.ok_or_else(|| Status::internal("an answer from a method nobody serves"))?;
    let message = DynamicMessage::decode(method.output.clone(), proto)
        .map_err(|e| Status::internal(format!("the answer does not decode: {e}")))?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .map_err(|e| Status::internal(format!("the answer has no JSON form: {e}")))?;
    Ok(out)
}

/// A unary call's gRPC answer, read whole, as Connect's.
async fn unary_response(
    response: http::Response<tonic::body::Body>,
    json: bool,
    method: Option<ConnectMethod>,
) -> http::Response<tonic::body::Body> {
    let shape = Shape::Unary { json };
    let (parts, body) = response.into_parts();
    let mut call_metadata: HeaderMap = metadata(&parts.headers)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        // Trailers-only: the call ended without a message.
        return error_or_empty(shape, status, call_metadata, &method);
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(status) => return error_response(shape, &status, call_metadata),
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let mut data = collected.to_bytes();
    for (name, value) in metadata(&trailers) {
        if let Ok(name) = HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
            call_metadata.append(name, value.clone());
        }
    }
    let status = Status::from_header_map(&trailers)
        .unwrap_or_else(|| Status::internal("the answer ended without a status"));
    if status.code() != Code::Ok {
        return error_response(shape, &status, call_metadata);
    }
    if data.len() < 5 {
        return error_or_empty(shape, status, call_metadata, &method);
    }
    data.advance(5);
    match encode_output(method.as_ref(), json, &data) {
        Ok(out) => {
            let mut response = http::Response::new(tonic::body::Body::new(
                http_body_util::Full::new(Bytes::from(out)),
            ));
            let headers = response.headers_mut();
            headers.extend(call_metadata);
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(if json {
                    "application/json"
                } else {
                    "application/proto"
                }),
            );
            response
        }
        Err(status) => error_response(shape, &status, call_metadata),
    }
}

/// An answer without a message: an error, or (OK) the empty message.
fn error_or_empty(
    shape: Shape,
    status: Status,
    call_metadata: HeaderMap,
    method: &Option<ConnectMethod>,
) -> http::Response<tonic::body::Body> {
    if status.code() != Code::Ok {
        return error_response(shape, &status, call_metadata);
    }
    let empty = encode_output(method.as_ref(), shape.json(), &[]).unwrap_or_default();
    let mut response = http::Response::new(tonic::body::Body::new(http_body_util::Full::new(
        Bytes::from(empty),
    )));
    response.headers_mut().extend(call_metadata);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(if shape.json() {
            "application/json"
        } else {
            "application/proto"
        }),
    );
    response
}

/// A streaming call's gRPC answer as Connect's: HTTP 200, each message in
/// an envelope, and the status and trailers in the end-of-stream envelope.
fn stream_response(
    response: http::Response<tonic::body::Body>,
    json: bool,
    method: Option<ConnectMethod>,
) -> http::Response<tonic::body::Body> {
    let shape = Shape::Stream { json };
    let (parts, body) = response.into_parts();
    let call_metadata: HeaderMap = metadata(&parts.headers)
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if let Some(status) = Status::from_header_map(&parts.headers) {
        let mut response = error_response(shape, &status, call_metadata);
        if status.code() == Code::Ok {
            *response.body_mut() = tonic::body::Body::new(http_body_util::Full::new(
                end_of_stream(None, &HeaderMap::new()),
            ));
        }
        return response;
    }
    let body = StreamBody {
        inner: body,
        json,
        method,
        buffer: BytesMut::new(),
        done: false,
    };
    let mut response = http::Response::new(tonic::body::Body::new(body));
    let headers = response.headers_mut();
    headers.extend(call_metadata);
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/connect+json"
        } else {
            "application/connect+proto"
        }),
    );
    response
}

/// A gRPC response body as a Connect stream.
struct StreamBody {
    inner: tonic::body::Body,
    json: bool,
    method: Option<ConnectMethod>,
    buffer: BytesMut,
    done: bool,
}

impl StreamBody {
    fn next_message(&mut self) -> Option<Result<Bytes, Status>> {
        if self.buffer.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if self.buffer.len() < len + 5 {
            return None;
        }
        let frame = self.buffer.split_to(len + 5);
        Some(
            encode_output(self.method.as_ref(), self.json, &frame[5..]).map(|out| {
                let mut envelope = BytesMut::with_capacity(out.len() + 5);
                envelope.put_u8(0);
                envelope.put_u32(out.len() as u32);
                envelope.extend_from_slice(&out);
                envelope.freeze()
            }),
        )
    }

    fn end(&mut self, status: Option<&Status>, trailers: &HeaderMap) -> Frame<Bytes> {
        self.done = true;
        Frame::data(end_of_stream(status, trailers))
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Some(Ok(envelope)) => return Poll::Ready(Some(Ok(Frame::data(envelope)))),
                Some(Err(status)) => {
                    let end = this.end(Some(&status), &HeaderMap::new());
                    return Poll::Ready(Some(Ok(end)));
                }
                None => {}
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let status = Status::from_header_map(&trailers).unwrap_or_else(|| {
                                Status::internal("the stream ended without a status")
                            });
                            let end = this.end(Some(&status), &trailers);
                            return Poll::Ready(Some(Ok(end)));
                        }
                    }
                },
                Some(Err(status)) => {
                    let end = this.end(Some(&status), &HeaderMap::new());
                    return Poll::Ready(Some(Ok(end)));
                }
                None => {
                    let status = Status::internal("the stream ended without a status");
                    let end = this.end(Some(&status), &HeaderMap::new());
                    return Poll::Ready(Some(Ok(end)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{GET, THINGS_PROTO, WATCH, descriptors, table};
    use std::sync::LazyLock;
    use tower_test::mock;

    type Request = http::Request<tonic::body::Body>;
    type Response = http::Response<tonic::body::Body>;

    static METHODS: LazyLock<Arc<ConnectMethods>> = LazyLock::new(|| {
        let set = descriptors(THINGS_PROTO);
        Arc::new(ConnectMethods::new(table(), &[&set], 64))
    });

    fn body(bytes: impl Into<Bytes>) -> tonic::body::Body {
        tonic::body::Body::new(http_body_util::Full::new(bytes.into()))
    }

    fn request(path: &str, content_type: &str, payload: impl Into<Bytes>) -> Request {
        http::Request::builder()
            .method("POST")
            .uri(path)
            .header("content-type", content_type)
            .header("connect-timeout-ms", "1500")
            .header("authorization", "Bearer t")
            .body(body(payload))
            .unwrap()
    }

    /// A gRPC frame of `message`.
    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    /// `things.v1.Thing { id }` in protobuf.
    fn thing(id: &str) -> Vec<u8> {
        let mut out = vec![0x0a, id.len() as u8];
        out.extend_from_slice(id.as_bytes());
        out
    }

    /// A gRPC answer: `frames`, then trailers with `status`.
    fn grpc_answer(frames: Vec<u8>, status: Status) -> Response {
        let mut trailers = HeaderMap::new();
        status.add_header(&mut trailers).unwrap();
        trailers.insert("x-custom", HeaderValue::from_static("kept"));
        let frames = http_body::Frame::data(Bytes::from(frames));
        let stream = futures::stream::iter([
            Ok::<_, Status>(frames),
            Ok(http_body::Frame::trailers(trailers)),
        ]);
        let mut response = http::Response::new(tonic::body::Body::new(
            http_body_util::StreamBody::new(stream),
        ));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        response
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static("req-1"));
        response
    }

    async fn read(body: tonic::body::Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_unary_json_call_is_the_grpc_call_it_means_and_its_answer_json() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(ConnectLayer::new(METHODS.clone()));
        assert!(svc.poll_ready().is_ready());
        let answer = svc.call(request(GET, "application/json", r#"{"id": "a1"}"#));
        let (grpc, reply) = handle.next_request().await.unwrap();
        assert_eq!(grpc.headers()["content-type"], "application/grpc+proto");
        assert_eq!(grpc.headers()["grpc-timeout"], "1500m");
        assert_eq!(grpc.headers()["authorization"], "Bearer t");
        assert_eq!(read(grpc.into_body()).await, framed(0, &thing("a1")));
        reply.send_response(grpc_answer(framed(0, &thing("a1")), Status::ok("")));

        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers()["x-request-id"], "req-1");
        assert_eq!(response.headers()["trailer-x-custom"], "kept");
        let json: serde_json::Value =
            serde_json::from_slice(&read(response.into_body()).await).unwrap();
        assert_eq!(json, serde_json::json!({ "id": "a1" }));
    }

    #[tokio::test]
    async fn an_error_is_connects_json_with_its_http_status_and_details() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(ConnectLayer::new(METHODS.clone()));
        assert!(svc.poll_ready().is_ready());
        let answer = svc.call(request(GET, "application/proto", thing("gone")));
        let (_, reply) = handle.next_request().await.unwrap();
        let details = tonic_types::ErrorDetails::with_error_info(
            "THING_NOT_FOUND",
            "things.v1",
            HashMap::new(),
        );
        let status = <Status as tonic_types::StatusExt>::with_error_details(
            Code::NotFound,
            "no such thing",
            details,
        );
        reply.send_response(status.into_http());

        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "application/json");
        let json: serde_json::Value =
            serde_json::from_slice(&read(response.into_body()).await).unwrap();
        assert_eq!(json["code"], "not_found");
        assert_eq!(json["message"], "no such thing");
        assert_eq!(json["details"][0]["type"], "google.rpc.ErrorInfo");
        let value = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(json["details"][0]["value"].as_str().unwrap())
            .unwrap();
        let info = tonic_types::pb::ErrorInfo::decode(&value[..]).unwrap();
        assert_eq!(info.reason, "THING_NOT_FOUND");
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_invalid_argument_and_codes_map_as_connect_says() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(ConnectLayer::new(METHODS.clone()));
        assert!(svc.poll_ready().is_ready());
        let answer = svc.call(request(GET, "application/json", "{\"id\": "));
        let (grpc, reply) = handle.next_request().await.unwrap();
        // What tonic does with a body that fails: answers with its status.
        let status = grpc.into_body().collect().await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("not a JSON things.v1.Thing"));
        reply.send_response(status.into_http());
        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);

        for (code, http) in [
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Unimplemented, 501),
            (Code::Cancelled, 499),
        ] {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
        assert_eq!(code_name(Code::Cancelled), "canceled");
    }

    #[tokio::test]
    async fn a_body_past_the_methods_limit_is_refused_as_it_arrives() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(ConnectLayer::new(METHODS.clone()));
        assert!(svc.poll_ready().is_ready());
        // The test table's limit is 64 bytes: JSON may take four times
        // that and a kilobyte.
        let long = format!(r#"{{"id": "{}"}}"#, "x".repeat(2000));
        let _answer = svc.call(request(GET, "application/json", long));
        let (grpc, _reply) = handle.next_request().await.unwrap();
        let status = grpc.into_body().collect().await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_stream_is_enveloped_both_ways_and_ends_with_its_status() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(ConnectLayer::new(METHODS.clone()));
        assert!(svc.poll_ready().is_ready());
        let envelope = framed(0, br#"{"id":"w"}"#);
        let answer = svc.call(request(WATCH, "application/connect+json", envelope));
        let (grpc, reply) = handle.next_request().await.unwrap();
        assert_eq!(read(grpc.into_body()).await, framed(0, &thing("w")));
        let mut frames = framed(0, &thing("v1"));
        frames.extend(framed(0, &thing("v2")));
        reply.send_response(grpc_answer(
            frames,
            Status::unavailable("server shutting down"),
        ));

        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            "application/connect+json"
        );
        let bytes = read(response.into_body()).await;
        let mut envelopes = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let json: serde_json::Value = serde_json::from_slice(&rest[5..5 + len]).unwrap();
            envelopes.push((rest[0], json));
            rest = &rest[5 + len..];
        }
        assert_eq!(envelopes.len(), 3);
        assert_eq!(envelopes[0], (0, serde_json::json!({ "id": "v1" })));
        assert_eq!(envelopes[1], (0, serde_json::json!({ "id": "v2" })));
        let (flags, end) = &envelopes[2];
        assert_eq!(*flags, END_STREAM);
        assert_eq!(end["error"]["code"], "unavailable");
        assert_eq!(end["metadata"]["x-custom"][0], "kept");
    }

    #[tokio::test]
    async fn a_streaming_method_called_as_unary_is_unimplemented_and_never_reaches_the_stack() {
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request, Response, _>(ConnectLayer::new(METHODS.clone()));
        assert!(svc.poll_ready().is_ready());
        let response = svc
            .call(request(WATCH, "application/json", "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(matches!(handle.poll_request(), Poll::Pending));
        // Other content types pass as they came.
        assert!(svc.poll_ready().is_ready());
        let _grpc = svc.call(request(GET, "application/grpc", framed(0, &thing("g"))));
        let (passed, _) = handle.next_request().await.unwrap();
        assert_eq!(passed.headers()["content-type"], "application/grpc");
    }
}
