//! The bad-input matrix: one table of hostile or malformed calls,
//! each with the gRPC code docs/reference.md "Errors" promises and, where it
//! names one, the `ErrorInfo` reason or the `BadRequest` field path, all run
//! against ONE running TLS server (and a second with small limits, for the
//! stream cap and load shedding). Afterwards the server must still answer a
//! valid call. Every mismatch is listed, not just the first.
//!
//! Every error must carry details that decode with `tonic_types::StatusExt`
//! ([`contract_details`]): an `ErrorInfo` (UPPER_SNAKE_CASE reason, the
//! called service as domain), a `RequestInfo`, and the detail its code
//! promises.
//!
//! The calls go through raw tonic clients (not the SDK), so nothing on the
//! client side second-guesses what is sent; undecodable protobuf bodies are
//! sent with a pass-through codec.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Buf, BufMut};
use common::jwt::{claims, crafted, kid, now, sign_es256};
use common::*;
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orders::sdk::pb;
use orders::sdk::pb::order_service_client::OrderServiceClient;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const RSA_KID: &str = "rsa-key";
const HS256_SECRET: &str = "a-development-secret-of-at-least-32-bytes";
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// RegisterOrder's own request limit, as the proto declares it.
const REGISTER_ORDER_LIMIT: usize = 16 * 1024;
/// Every other method's, as the proto declares it.
const OTHER_METHODS_LIMIT: usize = 4 * 1024;
/// The domain of the errors of OrderService calls.
const DOMAIN: &str = "orders.v1.OrderService";
/// `server.max_timeout_ms` of the limits server.
const LIMITS_MAX_TIMEOUT_MS: u64 = 2_000;

// ---------------------------------------------------------------- expectations

/// What a case must end with.
#[derive(Clone)]
struct Want {
    /// `None`: the call must fail at the transport (transport cases: no
    /// connection, or UNAVAILABLE / UNKNOWN depending on when the connection
    /// dies; any status a handler or the auth layer would give means the
    /// request got through).
    code: Option<Code>,
    reason: Option<&'static str>,
    field: Option<&'static str>,
    /// The `ErrorInfo.domain` of an error: the service called.
    domain: &'static str,
}

fn ok() -> Want {
    code(Code::Ok)
}
fn code(code: Code) -> Want {
    Want {
        code: Some(code),
        reason: None,
        field: None,
        domain: DOMAIN,
    }
}
fn with_reason(code: Code, reason: &'static str) -> Want {
    Want {
        reason: Some(reason),
        ..self::code(code)
    }
}
fn unauthenticated(reason: &'static str) -> Want {
    Want {
        reason: Some(reason),
        ..code(Code::Unauthenticated)
    }
}
fn missing_scope() -> Want {
    Want {
        reason: Some("MISSING_SCOPE"),
        ..code(Code::PermissionDenied)
    }
}
fn invalid(field: &'static str) -> Want {
    Want {
        field: Some(field),
        ..code(Code::InvalidArgument)
    }
}
fn fails() -> Want {
    Want {
        code: None,
        reason: None,
        field: None,
        domain: DOMAIN,
    }
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            None => write!(f, "transport failure")?,
            Some(c) => write!(f, "{c:?}")?,
        }
        if let Some(r) = self.reason {
            write!(f, " {r}")?;
        }
        if let Some(p) = self.field {
            write!(f, " @{p}")?;
        }
        Ok(())
    }
}

/// What a case ended with.
#[derive(Debug, Clone)]
struct Got {
    /// `None`: no gRPC status at all (the connection could not be made).
    code: Option<Code>,
    reason: Option<String>,
    fields: Vec<String>,
    message: String,
    /// The details of the status, decoded with `tonic_types::StatusExt`.
    details: tonic_types::ErrorDetails,
}

impl Got {
    fn ok() -> Self {
        Got {
            code: Some(Code::Ok),
            reason: None,
            fields: vec![],
            message: String::new(),
            details: Default::default(),
        }
    }

    fn connect_failed(why: impl std::fmt::Display) -> Self {
        Got {
            code: None,
            reason: None,
            fields: vec![],
            message: format!("connect: {why}"),
            details: Default::default(),
        }
    }

    fn from_result<T>(r: Result<T, tonic::Status>) -> Self {
        match r {
            Ok(_) => Got::ok(),
            Err(s) => Got::from(s),
        }
    }
}

impl From<tonic::Status> for Got {
    fn from(s: tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let reason = s.get_details_error_info().map(|i| i.reason);
        let fields = s
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        Got {
            code: Some(s.code()),
            reason,
            fields,
            message: s.message().chars().take(80).collect(),
            details: s.get_error_details(),
        }
    }
}

/// What the details of an error with `code` must hold (docs/reference.md
/// "Errors"): `Err` says what is missing.
fn contract_details(code: Code, domain: &str, d: &tonic_types::ErrorDetails) -> Result<(), String> {
    let info = d.error_info().ok_or("no ErrorInfo")?;
    let snake = !info.reason.is_empty()
        && info
            .reason
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !snake {
        return Err(format!("reason {:?} is not UPPER_SNAKE_CASE", info.reason));
    }
    if info.domain != domain {
        return Err(format!("domain {:?}, not {domain:?}", info.domain));
    }
    if d.request_info().is_none_or(|r| r.request_id.is_empty()) {
        return Err("no RequestInfo".into());
    }
    let missing = |what: &str| Err(format!("no {what}"));
    match code {
        Code::InvalidArgument if d.bad_request().is_none() => missing("BadRequest"),
        Code::NotFound => match d.resource_info() {
            None => missing("ResourceInfo"),
            Some(r) if !r.owner.is_empty() => Err("ResourceInfo names an owner".into()),
            Some(r) if r.resource_name.chars().count() > 65 => Err(format!(
                "ResourceInfo echoes {} characters",
                r.resource_name.chars().count()
            )),
            Some(_) => Ok(()),
        },
        Code::FailedPrecondition | Code::Aborted if d.precondition_failure().is_none() => {
            missing("PreconditionFailure")
        }
        Code::Unavailable if d.retry_info().is_none() => missing("RetryInfo"),
        Code::ResourceExhausted => match (info.reason.as_str(), d.retry_info()) {
            ("MESSAGE_TOO_LARGE", Some(_)) => Err("RetryInfo on a message that fails again".into()),
            ("MESSAGE_TOO_LARGE", None)
                if !info.metadata.get("max_message_bytes").is_some_and(|limit| {
                    [REGISTER_ORDER_LIMIT, OTHER_METHODS_LIMIT]
                        .iter()
                        .any(|l| *limit == l.to_string())
                }) =>
            {
                Err(format!("metadata {:?} lacks the limit", info.metadata))
            }
            ("SERVER_OVERLOADED", None) => missing("RetryInfo"),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            None => write!(f, "no connection")?,
            Some(c) => write!(f, "{c:?}")?,
        }
        if let Some(r) = &self.reason {
            write!(f, " {r}")?;
        }
        if !self.fields.is_empty() {
            write!(f, " @{}", self.fields.join(","))?;
        }
        Ok(())
    }
}

impl Want {
    fn matches(&self, got: &Got) -> bool {
        match self.code {
            None => matches!(got.code, None | Some(Code::Unavailable | Code::Unknown)),
            Some(c) => {
                got.code == Some(c)
                    && self.reason.is_none_or(|r| got.reason.as_deref() == Some(r))
                    && self.field.is_none_or(|p| got.fields.iter().any(|f| f == p))
                    && (c == Code::Ok || contract_details(c, self.domain, &got.details).is_ok())
            }
        }
    }
}

// ---------------------------------------------------------------- clients

/// A TLS channel to `addr` trusting `ca`, optionally presenting a client
/// certificate.
async fn tls_channel(
    port: u16,
    ca: &[u8],
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// `msg` with `authorization: Bearer <token>` (none when `token` is `None`).
fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII token"),
        );
    }
    request
}

/// A codec that sends and receives message bodies as they are: the way to
/// put bytes on the wire that no protobuf encoder would produce.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// A unary call of `path` with `body` as the raw protobuf bytes of the request.
async fn raw_unary(channel: Channel, token: String, path: &'static str, body: Vec<u8>) -> Got {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return Got::connect_failed(e);
    }
    let path = http::uri::PathAndQuery::from_static(path);
    Got::from_result(
        grpc.unary(with_token(body, Some(&token)), path, RawCodec)
            .await,
    )
}

/// How a WatchOrder ends: its first error, or OK.
async fn watch_until_it_ends(
    mut client: OrderServiceClient<Channel>,
    request: tonic::Request<pb::WatchOrderRequest>,
) -> Got {
    let mut stream = match client.watch_order(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Got::from(status),
    };
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Got::ok(),
            Err(status) => return Got::from(status),
        }
    }
}

/// A certificate authority for client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A client certificate and its key, PEM.
    fn client(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        (
            params.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

// ---------------------------------------------------------------- requests

fn valid_request() -> pb::RegisterOrderRequest {
    register_request("")
}

/// A RegisterOrder field-limit case: `edit` spoils (or stretches) a valid
/// request; `None` means the request must be accepted.
type Edit = Box<dyn Fn(&mut pb::RegisterOrderRequest)>;

fn field_limit_cases() -> Vec<(String, Edit, Option<&'static str>)> {
    fn street(r: &mut pb::RegisterOrderRequest) -> &mut pb::Address {
        r.address.as_mut().unwrap()
    }
    let mut cases: Vec<(String, Edit, Option<&'static str>)> = vec![
        ("items: 1".into(), Box::new(|r| r.items.truncate(1)), None),
        (
            "items: 100".into(),
            Box::new(|r| r.items = vec![item("SKU-1", 1, 1); 100]),
            None,
        ),
        (
            "items: 0".into(),
            Box::new(|r| r.items.clear()),
            Some("items"),
        ),
        (
            "items: 101".into(),
            Box::new(|r| r.items = vec![item("SKU-1", 1, 1); 101]),
            Some("items"),
        ),
        (
            "sku: 1 character".into(),
            Box::new(|r| r.items[0].sku = "A".into()),
            None,
        ),
        (
            "sku: 64 characters".into(),
            Box::new(|r| r.items[0].sku = "A-9".repeat(21) + "Z"),
            None,
        ),
        (
            "sku: empty".into(),
            Box::new(|r| r.items[0].sku = String::new()),
            Some("items[0].sku"),
        ),
        (
            "sku: 65 characters".into(),
            Box::new(|r| r.items[0].sku = "A".repeat(65)),
            Some("items[0].sku"),
        ),
        (
            "sku: lowercase".into(),
            Box::new(|r| r.items[0].sku = "apple-1".into()),
            Some("items[0].sku"),
        ),
        (
            "sku: second item bad (path index)".into(),
            Box::new(|r| r.items[1].sku = "MILK_2".into()),
            Some("items[1].sku"),
        ),
    ];
    let ints: [(&str, i64, i64, &'static str); 3] = [
        ("quantity", 1, 1_000, "items[0].quantity"),
        (
            "unit_price_cents",
            0,
            10_000_000,
            "items[0].unit_price_cents",
        ),
        ("number", 1, 1_000_000, "address.number"),
    ];
    for (name, lo, hi, path) in ints {
        let set = move |r: &mut pb::RegisterOrderRequest, v: i64| match name {
            "quantity" => r.items[0].quantity = v as i32,
            "unit_price_cents" => r.items[0].unit_price_cents = v,
            _ => street(r).number = v,
        };
        cases.push((format!("{name}: {lo}"), Box::new(move |r| set(r, lo)), None));
        cases.push((format!("{name}: {hi}"), Box::new(move |r| set(r, hi)), None));
        cases.push((
            format!("{name}: {}", lo - 1),
            Box::new(move |r| set(r, lo - 1)),
            Some(path),
        ));
        cases.push((
            format!("{name}: {}", hi + 1),
            Box::new(move |r| set(r, hi + 1)),
            Some(path),
        ));
    }
    // Lengths count characters, not bytes: 'ü' is two bytes in UTF-8.
    let texts: [(&str, usize, &'static str); 3] = [
        ("street", 200, "address.street"),
        ("city", 200, "address.city"),
        ("postal_code", 16, "address.postal_code"),
    ];
    for (name, max, path) in texts {
        let set = move |r: &mut pb::RegisterOrderRequest, v: String| match name {
            "street" => street(r).street = v,
            "city" => street(r).city = v,
            _ => street(r).postal_code = v,
        };
        cases.push((
            format!("{name}: 1 character"),
            Box::new(move |r| set(r, "9".into())),
            None,
        ));
        cases.push((
            format!("{name}: {max} × 'ü'"),
            Box::new(move |r| set(r, "ü".repeat(max))),
            None,
        ));
        cases.push((
            format!("{name}: empty"),
            Box::new(move |r| set(r, String::new())),
            Some(path),
        ));
        cases.push((
            format!("{name}: {} × 'ü'", max + 1),
            Box::new(move |r| set(r, "ü".repeat(max + 1))),
            Some(path),
        ));
    }
    cases.push((
        "postal_code: invalid character '_'".into(),
        Box::new(|r| street(r).postal_code = "3511_AB".into()),
        Some("address.postal_code"),
    ));
    cases.push((
        "request_id: not a UUID".into(),
        Box::new(|r| r.request_id = "not-a-uuid".into()),
        Some("request_id"),
    ));
    cases.push((
        "request_id: a UUID".into(),
        Box::new(|r| r.request_id = uuid::Uuid::new_v4().to_string()),
        None,
    ));
    cases.push((
        "address: missing".into(),
        Box::new(|r| r.address = None),
        Some("address"),
    ));
    cases
}

// ---------------------------------------------------------------- the matrix

type Call = BoxFuture<'static, Got>;

#[tokio::test]
async fn the_bad_input_matrix_gets_the_contract_codes_and_the_server_keeps_serving() {
    let started = Instant::now();

    // An RS256 public key beside the ES256 JWKS, and HS256 with a secret (as
    // in development), so algorithm confusion has a real target: an HS256
    // token "signed" with the RSA public key and naming its kid.
    let key_dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa_public_pem = rsa.public_key_pem();
    let rsa_file = key_dir.path().join(format!("{RSA_KID}.pem"));
    std::fs::write(&rsa_file, &rsa_public_pem).unwrap();

    let certs = Arc::new(Certs::new());
    let server = TestServer::start_with(certs.clone(), Backend::sqlite(), |s| {
        s.server.max_message_bytes = MAX_MESSAGE_BYTES;
        s.auth.public_keys = vec![rsa_file.clone()];
        s.auth.algorithms = vec!["ES256".into(), "RS256".into(), "HS256".into()];
        s.auth.hs256_secret = Some(HS256_SECRET.to_string().into());
        s.validate().unwrap();
    })
    .await;

    // A second server with mutual TLS for the client-certificate cases.
    let clients_ca = Ca::new("orders clients CA");
    let other_ca = Ca::new("somebody else's CA");
    let ca_file = key_dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, &clients_ca.pem).unwrap();
    let mtls = TestServer::start_with(certs.clone(), Backend::sqlite(), |s| {
        s.tls.client_ca = Some(ca_file.clone());
    })
    .await;

    // A third with small limits: a short time cap, one call at a time.
    let limits = TestServer::start_with(certs.clone(), Backend::sqlite(), |s| {
        s.server.default_timeout = Duration::from_millis(LIMITS_MAX_TIMEOUT_MS);
        s.server.max_timeout = Duration::from_millis(LIMITS_MAX_TIMEOUT_MS);
        s.server.concurrency_limit = 1;
        s.validate().unwrap();
    })
    .await;

    let ca = certs.ca();
    let channel = tls_channel(server.addr.port(), &ca, None).await.unwrap();
    let client = OrderServiceClient::new(channel.clone());
    let limits_client =
        OrderServiceClient::new(tls_channel(limits.addr.port(), &ca, None).await.unwrap());

    let alice = certs.token("alice", READ_WRITE);
    let bob = certs.token("bob", READ_WRITE);
    let reader = certs.token("alice", "orders:read");
    let staff = certs.token("staff-1", STAFF);
    let our_kid = kid(&certs);

    // Alice's orders for the access cases: one fresh (version 1), one cancelled.
    let register = |token: &str| {
        let mut c = client.clone();
        let req = with_token(valid_request(), Some(token));
        async move { c.register_order(req).await.unwrap().into_inner().order_id }
    };
    let order_id = register(&alice).await;
    let cancelled_id = register(&alice).await;
    let limits_order = limits_client
        .clone()
        .register_order(with_token(valid_request(), Some(&alice)))
        .await
        .unwrap()
        .into_inner()
        .order_id;
    client
        .clone()
        .cancel_order(with_token(
            pb::CancelOrderRequest {
                order_id: cancelled_id.clone(),
                expected_version: 0,
            },
            Some(&alice),
        ))
        .await
        .unwrap();

    let mut cases: Vec<(String, Want, Call)> = Vec::new();

    // GetOrder of alice's order with arbitrary metadata.
    let get_with = |metadata: Vec<(&'static str, String)>| -> Call {
        let mut c = client.clone();
        let mut req = tonic::Request::new(pb::GetOrderRequest {
            order_id: order_id.clone(),
        });
        for (k, v) in metadata {
            req.metadata_mut().insert(k, v.parse().unwrap());
        }
        Box::pin(async move { Got::from_result(c.get_order(req).await) })
    };
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];

    // --- authentication: UNAUTHENTICATED with a stable ErrorInfo reason.
    let valid = certs.token("alice", READ_WRITE);
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    sig[10] ^= 0xff;
    let tokens: Vec<(&str, String, &'static str)> = vec![
        ("token: malformed", "not.a.token".into(), "MALFORMED_TOKEN"),
        (
            "token: two parts",
            format!("{head}.{payload}"),
            "MALFORMED_TOKEN",
        ),
        (
            "token: wrong signature",
            format!("{head}.{payload}.{}", URL_SAFE_NO_PAD.encode(&sig)),
            "BAD_SIGNATURE",
        ),
        (
            "token: payload swapped under a valid signature",
            format!(
                "{head}.{}.{signature}",
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("staff-1", STAFF)).unwrap())
            ),
            "BAD_SIGNATURE",
        ),
        (
            "token: expired",
            certs.token_with("alice", READ_WRITE, |c| c.exp = now() - 3600),
            "TOKEN_EXPIRED",
        ),
        (
            "token: not yet valid",
            certs.token_with("alice", READ_WRITE, |c| c.nbf = now() + 3600),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "token: wrong iss",
            certs.token_with("alice", READ_WRITE, |c| c.iss = "evil".into()),
            "WRONG_ISSUER",
        ),
        (
            "token: wrong aud",
            certs.token_with("alice", READ_WRITE, |c| c.aud = "other".into()),
            "WRONG_AUDIENCE",
        ),
        (
            "token: alg none",
            crafted(
                json!({"alg": "none", "typ": "JWT", "kid": our_kid}),
                &claims("alice", READ_WRITE),
                b"",
            ),
            "MALFORMED_TOKEN",
        ),
        (
            "token: HS256 signed with the RS256 public key (alg confusion)",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some(RSA_KID.into());
                jsonwebtoken::encode(
                    &h,
                    &claims("alice", READ_WRITE),
                    &EncodingKey::from_secret(rsa_public_pem.as_bytes()),
                )
                .unwrap()
            },
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "token: HS256 signed with the RS256 public key, no kid",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims("alice", READ_WRITE),
                &EncodingKey::from_secret(rsa_public_pem.as_bytes()),
            )
            .unwrap(),
            "BAD_SIGNATURE",
        ),
        (
            "token: unknown kid",
            sign_es256(&certs, "nobody", &claims("alice", READ_WRITE)),
            "UNKNOWN_KEY",
        ),
        (
            "token: another issuer's key",
            Certs::new().token("alice", READ_WRITE),
            "UNKNOWN_KEY",
        ),
        (
            "token: no sub",
            sign_es256(
                &certs,
                &our_kid,
                &json!({"scope": READ_WRITE, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
            ),
            "MALFORMED_TOKEN",
        ),
        (
            "token: oversized (10 KiB: over 8 KiB, under 16 KiB headers)",
            "a".repeat(10 * 1024),
            "TOKEN_TOO_LARGE",
        ),
    ];
    for (name, token, reason) in tokens {
        cases.push((
            name.into(),
            unauthenticated(reason),
            get_with(bearer(&token)),
        ));
    }
    cases.push((
        "token: none".into(),
        unauthenticated("MISSING_TOKEN"),
        get_with(vec![]),
    ));
    cases.push((
        "token: in the wrong metadata key (x-token)".into(),
        unauthenticated("MISSING_TOKEN"),
        get_with(vec![("x-token", valid.clone())]),
    ));
    cases.push((
        "token: Basic scheme".into(),
        unauthenticated("MISSING_TOKEN"),
        get_with(vec![("authorization", "Basic YWxpY2U6c2VjcmV0".into())]),
    ));
    cases.push((
        "token: Bearer with nothing after it".into(),
        unauthenticated("MALFORMED_TOKEN"),
        get_with(vec![("authorization", "Bearer ".into())]),
    ));

    // --- authorization.
    {
        let mut c = client.clone();
        let req = with_token(valid_request(), Some(&reader));
        cases.push((
            "scope: read-only token calls RegisterOrder".into(),
            missing_scope(),
            Box::pin(async move { Got::from_result(c.register_order(req).await) }),
        ));
    }
    {
        let mut c = client.clone();
        let req = with_token(
            pb::AdvanceOrderRequest {
                order_id: order_id.clone(),
                expected_version: 0,
            },
            Some(&alice),
        );
        cases.push((
            "scope: customer calls AdvanceOrder".into(),
            missing_scope(),
            Box::pin(async move { Got::from_result(c.advance_order(req).await) }),
        ));
    }
    {
        let write_only = certs.token("alice", "orders:write");
        cases.push((
            "scope: write-only token calls GetOrder".into(),
            missing_scope(),
            get_with(bearer(&write_only)),
        ));
    }

    // --- orders the caller may not see: NOT_FOUND, whatever the id's form.
    let unknown = uuid::Uuid::now_v7().to_string();
    for (what, id, token) in [
        ("another customer's order", order_id.clone(), bob.clone()),
        ("an unknown id", unknown.clone(), alice.clone()),
        (
            "a malformed id",
            "'; DROP TABLE orders;--".into(),
            alice.clone(),
        ),
        ("an empty id", String::new(), alice.clone()),
    ] {
        let mut c = client.clone();
        let req = with_token(
            pb::GetOrderRequest {
                order_id: id.clone(),
            },
            Some(&token),
        );
        cases.push((
            format!("GetOrder: {what}"),
            with_reason(Code::NotFound, "ORDER_NOT_FOUND"),
            Box::pin(async move { Got::from_result(c.get_order(req).await) }),
        ));
        let mut c = client.clone();
        let req = with_token(
            pb::CancelOrderRequest {
                order_id: id.clone(),
                expected_version: 0,
            },
            Some(&token),
        );
        cases.push((
            format!("CancelOrder: {what}"),
            with_reason(Code::NotFound, "ORDER_NOT_FOUND"),
            Box::pin(async move { Got::from_result(c.cancel_order(req).await) }),
        ));
        let mut c = client.clone();
        let req = with_token(
            pb::WatchOrderRequest {
                order_id: id,
                after_version: 0,
            },
            Some(&token),
        );
        cases.push((
            format!("WatchOrder: {what}"),
            with_reason(Code::NotFound, "ORDER_NOT_FOUND"),
            Box::pin(async move { Got::from_result(c.watch_order(req).await) }),
        ));
    }
    {
        let mut c = client.clone();
        let req = with_token(
            pb::AdvanceOrderRequest {
                order_id: unknown.clone(),
                expected_version: 0,
            },
            Some(&staff),
        );
        cases.push((
            "AdvanceOrder (staff): an unknown id".into(),
            with_reason(Code::NotFound, "ORDER_NOT_FOUND"),
            Box::pin(async move { Got::from_result(c.advance_order(req).await) }),
        ));
    }

    {
        let mut c = client.clone();
        let req = with_token(
            pb::GetOrderRequest {
                order_id: "0".repeat(OTHER_METHODS_LIMIT - 16),
            },
            Some(&alice),
        );
        cases.push((
            "GetOrder: an id just under the method's limit (not echoed whole)".into(),
            with_reason(Code::NotFound, "ORDER_NOT_FOUND"),
            Box::pin(async move { Got::from_result(c.get_order(req).await) }),
        ));
    }

    {
        let mut c = client.clone();
        let req = with_token(
            pb::GetOrderRequest {
                order_id: "0".repeat(8 * 1024),
            },
            Some(&alice),
        );
        cases.push((
            "GetOrder: an 8 KiB id, over the method's limit".into(),
            with_reason(Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
            Box::pin(async move { Got::from_result(c.get_order(req).await) }),
        ));
    }

    // --- request_id reused with another payload.
    {
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut c = client.clone();
        let first = with_token(register_request(&request_id), Some(&alice));
        let mut other = register_request(&request_id);
        other.items[0].quantity += 1;
        let other = with_token(other, Some(&alice));
        cases.push((
            "RegisterOrder: request_id reused with another payload".into(),
            with_reason(Code::AlreadyExists, "REQUEST_ID_REUSED"),
            Box::pin(async move {
                if let Err(status) = c.register_order(first).await {
                    return Got::from(status);
                }
                Got::from_result(c.register_order(other).await)
            }),
        ));
    }

    // --- lifecycle and versions.
    {
        let mut c = client.clone();
        let req = with_token(
            pb::CancelOrderRequest {
                order_id: order_id.clone(),
                expected_version: 42,
            },
            Some(&alice),
        );
        cases.push((
            "CancelOrder: expected_version mismatch".into(),
            with_reason(Code::Aborted, "VERSION_MISMATCH"),
            Box::pin(async move { Got::from_result(c.cancel_order(req).await) }),
        ));
        let mut c = client.clone();
        let req = with_token(
            pb::CancelOrderRequest {
                order_id: cancelled_id.clone(),
                expected_version: 0,
            },
            Some(&alice),
        );
        cases.push((
            "CancelOrder: already cancelled".into(),
            with_reason(Code::FailedPrecondition, "STATUS_FORBIDS_ACTION"),
            Box::pin(async move { Got::from_result(c.cancel_order(req).await) }),
        ));
    }

    // --- ListOrders.
    for (what, page_size, page_token, status, want) in [
        ("page_size -1", -1, "", 0, invalid("page_size")),
        ("status 99", 0, "", 99, invalid("status")),
        (
            "a forged page token",
            0,
            "eyJhZnRlciI6IjAxOTAifQ.Zm9yZ2Vk",
            0,
            invalid("page_token"),
        ),
        ("page_size 1000 (clamped)", 1000, "", 0, ok()),
    ] {
        let mut c = client.clone();
        let req = with_token(
            pb::ListOrdersRequest {
                page_size,
                page_token: page_token.into(),
                status,
            },
            Some(&alice),
        );
        cases.push((
            format!("ListOrders: {what}"),
            want,
            Box::pin(async move { Got::from_result(c.list_orders(req).await) }),
        ));
    }

    // --- WatchOrder versions.
    for (what, after_version, want) in [
        ("after_version -1", -1, invalid("after_version")),
        (
            "after_version ahead of the order",
            99,
            with_reason(Code::OutOfRange, "OUT_OF_RANGE"),
        ),
        ("after_version 1 (its current version)", 1, ok()),
    ] {
        let mut c = client.clone();
        let req = with_token(
            pb::WatchOrderRequest {
                order_id: order_id.clone(),
                after_version,
            },
            Some(&alice),
        );
        cases.push((
            format!("WatchOrder: {what}"),
            want,
            Box::pin(async move { Got::from_result(c.watch_order(req).await) }),
        ));
    }

    // --- UpdateOrder naming two orders in one stream.
    {
        let mut c = client.clone();
        let messages = vec![
            pb::UpdateOrderRequest {
                order_id: order_id.clone(),
                address: Some(address("New Street")),
                expected_version: 0,
            },
            pb::UpdateOrderRequest {
                order_id: cancelled_id.clone(),
                address: Some(address("Other Street")),
                expected_version: 0,
            },
        ];
        let req = with_token(tokio_stream::iter(messages), Some(&alice));
        cases.push((
            "UpdateOrder: a stream naming two orders".into(),
            invalid("order_id"),
            Box::pin(async move { Got::from_result(c.update_order(req).await) }),
        ));
        let mut c = client.clone();
        let req = with_token(
            tokio_stream::iter(vec![pb::UpdateOrderRequest {
                order_id: order_id.clone(),
                address: Some(pb::Address {
                    city: String::new(),
                    ..address("New Street")
                }),
                expected_version: 0,
            }]),
            Some(&alice),
        );
        cases.push((
            "UpdateOrder: an address without a city".into(),
            invalid("address.city"),
            Box::pin(async move { Got::from_result(c.update_order(req).await) }),
        ));
    }

    // --- Every RegisterOrder field limit at its bound and one past it.
    for (name, edit, path) in field_limit_cases() {
        let mut req = valid_request();
        edit(&mut req);
        let mut c = client.clone();
        let req = with_token(req, Some(&alice));
        cases.push((
            format!("RegisterOrder {name}"),
            path.map_or_else(ok, invalid),
            Box::pin(async move { Got::from_result(c.register_order(req).await) }),
        ));
    }

    // --- Bodies that are not a valid RegisterOrderRequest: tonic answers
    // INTERNAL ("failed to decode Protobuf message") before any handler
    // runs, and the service keeps that (docs/reference.md, "Codes").
    let mut with_id = valid_request();
    with_id.request_id = uuid::Uuid::new_v4().to_string();
    let encoded = with_id.encode_to_vec();
    // Field 3 (request_id, a string) holding bytes that are not UTF-8.
    let mut bad_utf8 = valid_request().encode_to_vec();
    bad_utf8.extend_from_slice(&[0x1a, 0x04, 0xff, 0xfe, 0xc3, 0x28]);
    // The same inside a nested message: Address.street (field 2 → field 1).
    let mut bad_street = pb::RegisterOrderRequest {
        address: None,
        ..valid_request()
    }
    .encode_to_vec();
    bad_street.extend_from_slice(&[0x12, 0x04, 0x0a, 0x02, 0xc0, 0xaf]);
    for (what, body, want) in [
        (
            "truncated protobuf (cut inside request_id)",
            encoded[..encoded.len() - 5].to_vec(),
            with_reason(Code::Internal, "INTERNAL"),
        ),
        (
            "garbage protobuf",
            vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x13, 0x37],
            with_reason(Code::Internal, "INTERNAL"),
        ),
        (
            "invalid UTF-8 in request_id",
            bad_utf8,
            with_reason(Code::Internal, "INTERNAL"),
        ),
        (
            "invalid UTF-8 in address.street",
            bad_street,
            with_reason(Code::Internal, "INTERNAL"),
        ),
        (
            "empty body (a valid, empty message)",
            vec![],
            invalid("items"),
        ),
        ("the valid bytes themselves", encoded.clone(), ok()),
    ] {
        cases.push((
            format!("raw body: {what}"),
            want,
            Box::pin(raw_unary(
                channel.clone(),
                alice.clone(),
                "/orders.v1.OrderService/RegisterOrder",
                body,
            )),
        ));
    }

    // --- What tonic answers by itself: a method or a service the server
    // does not have.
    for (what, path, domain) in [
        (
            "a method OrderService does not have",
            "/orders.v1.OrderService/NoSuchMethod",
            DOMAIN,
        ),
        (
            "a service the server does not have",
            "/orders.v1.NoSuchService/Get",
            "orders.v1.NoSuchService",
        ),
    ] {
        cases.push((
            format!("UNIMPLEMENTED: {what}"),
            Want {
                domain,
                ..with_reason(Code::Unimplemented, "UNIMPLEMENTED")
            },
            Box::pin(raw_unary(channel.clone(), alice.clone(), path, vec![])),
        ));
    }

    // --- The client's own deadline passing on a stream that never ends by
    // itself (alice's order stays PENDING).
    {
        let mut req = with_token(
            pb::WatchOrderRequest {
                order_id: order_id.clone(),
                after_version: 0,
            },
            Some(&alice),
        );
        req.set_timeout(Duration::from_millis(500));
        cases.push((
            "WatchOrder: the client's 500 ms deadline passes".into(),
            with_reason(Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
            Box::pin(watch_until_it_ends(client.clone(), req)),
        ));
    }

    // --- The limits server: a stream past server.max_timeout_ms, a call
    // past server.concurrency_limit.
    {
        let mut req = with_token(
            pb::WatchOrderRequest {
                order_id: limits_order.clone(),
                after_version: 0,
            },
            Some(&alice),
        );
        req.set_timeout(Duration::from_secs(60));
        cases.push((
            "WatchOrder: a deadline past server.max_timeout_ms (the server's cap)".into(),
            with_reason(Code::Unavailable, "STREAM_TIME_LIMIT"),
            Box::pin(watch_until_it_ends(limits_client.clone(), req)),
        ));
    }
    {
        let mut c = limits_client.clone();
        let token = alice.clone();
        let order = limits_order.clone();
        cases.push((
            "GetOrder: while an UpdateOrder holds the only slot (shed)".into(),
            with_reason(Code::ResourceExhausted, "SERVER_OVERLOADED"),
            Box::pin(async move {
                // A client stream that is never half-closed holds its slot.
                let (hold, held) = tokio::sync::mpsc::channel::<pb::UpdateOrderRequest>(1);
                let holder = {
                    let mut c = c.clone();
                    let req = with_token(
                        tokio_stream::wrappers::ReceiverStream::new(held),
                        Some(&token),
                    );
                    tokio::spawn(async move { c.update_order(req).await })
                };
                // Until the holder has taken the slot (a bounded wait).
                let mut got = Got::ok();
                for _ in 0..100 {
                    let req = with_token(
                        pb::GetOrderRequest {
                            order_id: order.clone(),
                        },
                        Some(&token),
                    );
                    got = Got::from_result(c.get_order(req).await);
                    if got.code != Some(Code::Ok) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Half-closed without an update: INVALID_ARGUMENT, and the
                // slot is free again before the answer leaves.
                drop(hold);
                let _ = holder.await;
                got
            }),
        ));
    }

    // --- An oversized message (over server.max_message_bytes = 64 KiB, and
    // so over RegisterOrder's own limit).
    {
        let mut big = valid_request();
        big.address.as_mut().unwrap().street = "x".repeat(MAX_MESSAGE_BYTES + 1024);
        let mut c = client.clone();
        let req = with_token(big, Some(&alice));
        cases.push((
            "RegisterOrder: message over max_message_bytes".into(),
            with_reason(Code::ResourceExhausted, "MESSAGE_TOO_LARGE"),
            Box::pin(async move { Got::from_result(c.register_order(req).await) }),
        ));
    }

    // --- Transport: plaintext to the TLS port; mutual TLS.
    {
        let port = server.addr.port();
        let token = alice.clone();
        cases.push((
            "transport: plaintext gRPC to the TLS port".into(),
            fails(),
            Box::pin(async move {
                let channel = match Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect_timeout(Duration::from_secs(5))
                    .connect()
                    .await
                {
                    Ok(c) => c,
                    Err(e) => return Got::connect_failed(e),
                };
                let mut c = OrderServiceClient::new(channel);
                Got::from_result(
                    c.register_order(with_token(valid_request(), Some(&token)))
                        .await,
                )
            }),
        ));
    }
    let mtls_call = |identity: Option<(String, String)>| -> Call {
        let port = mtls.addr.port();
        let ca = ca.clone();
        let token = alice.clone();
        Box::pin(async move {
            let id = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
            let channel = match tls_channel(port, &ca, id).await {
                Ok(c) => c,
                Err(e) => return Got::connect_failed(e),
            };
            let mut c = OrderServiceClient::new(channel);
            Got::from_result(
                c.register_order(with_token(valid_request(), Some(&token)))
                    .await,
            )
        })
    };
    cases.push((
        "mTLS: no client certificate".into(),
        fails(),
        mtls_call(None),
    ));
    cases.push((
        "mTLS: a certificate from another CA".into(),
        fails(),
        mtls_call(Some(other_ca.client("shop-frontend"))),
    ));
    cases.push((
        "mTLS: a certificate from the configured CA".into(),
        ok(),
        mtls_call(Some(clients_ca.client("shop-frontend"))),
    ));

    // --- Run them all, one after the other, against the same servers.
    let total = cases.len();
    let mut rows = Vec::with_capacity(total);
    for (name, want, call) in cases {
        let got = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| Got {
                message: "timed out after 10 s".into(),
                ..Got::connect_failed("")
            });
        rows.push((name, want, got));
    }

    // --- The server still answers a valid call: register, then get.
    let mut c = client.clone();
    let created = c
        .register_order(with_token(valid_request(), Some(&alice)))
        .await
        .expect("the server still registers orders after the matrix")
        .into_inner();
    let fetched = c
        .get_order(with_token(
            pb::GetOrderRequest {
                order_id: created.order_id.clone(),
            },
            Some(&alice),
        ))
        .await
        .expect("and still reads them")
        .into_inner();
    assert_eq!(fetched.id, created.order_id);
    // And over a fresh connection too.
    let fresh = tls_channel(server.addr.port(), &ca, None).await.unwrap();
    OrderServiceClient::new(fresh)
        .get_order(with_token(
            pb::GetOrderRequest {
                order_id: created.order_id,
            },
            Some(&alice),
        ))
        .await
        .expect("a new connection is served");

    // --- The table, then every mismatch.
    let width = rows
        .iter()
        .map(|(n, ..)| n.chars().count())
        .max()
        .unwrap_or(4);
    eprintln!("{:<width$} | {:<40} | got", "case", "expected");
    eprintln!("{}", "-".repeat(width + 60));
    let mut mismatches = Vec::new();
    for (name, want, got) in &rows {
        let verdict = if want.matches(got) {
            ""
        } else {
            "   <-- MISMATCH"
        };
        // What the details lack, for an error of the expected code.
        let details = match (want.code, got.code) {
            (Some(w), Some(g)) if w == g && g != Code::Ok => {
                contract_details(g, want.domain, &got.details)
                    .err()
                    .map(|why| format!(" [details: {why}]"))
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        eprintln!(
            "{:<width$} | {:<40} | {got}{details}{verdict}",
            name,
            want.to_string(),
        );
        if !verdict.is_empty() {
            mismatches.push(format!(
                "{name}: expected {want}, got {got}{details} ({:?})",
                got.message
            ));
        }
    }
    eprintln!("{total} cases in {:?}", started.elapsed());
    assert!(total >= 40, "the matrix has only {total} cases");
    assert!(
        mismatches.is_empty(),
        "{} of {total} cases mismatched:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    mtls.stop().await;
    limits.stop().await;
    server.stop().await;
}
