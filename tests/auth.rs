//! Authentication and authorization (docs/reference.md "Authentication and authorization") against a running
//! TLS server: real ES256/EdDSA/HS256 tokens, spoiled one way at a time.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::jwt::{claims, crafted, kid, now, sign_es256};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orders::sdk::{Client, pb};
use serde_json::json;
use std::sync::Arc;
use tonic::Code;

async fn call_with(server: &TestServer, metadata: &[(&'static str, &str)]) -> tonic::Status {
    let client = server.anonymous().await;
    let mut raw = pb::order_service_client::OrderServiceClient::new(client.channel());
    let mut request = tonic::Request::new(pb::GetOrderRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
    });
    for (k, v) in metadata {
        request.metadata_mut().insert(*k, v.parse().unwrap());
    }
    raw.get_order(request).await.unwrap_err()
}

#[tokio::test]
async fn tokens_spoiled_one_way_at_a_time_are_unauthenticated_with_a_reason() {
    let server = TestServer::start(Backend::sqlite()).await;
    let certs = server.certs.clone();
    let other = Certs::new();
    let our_kid = kid(&certs);
    let valid = certs.token("alice", READ_WRITE);
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    sig[10] ^= 0xff;
    let public_jwks = std::fs::read(certs.dev.path(grpc_platform::dev::JWKS)).unwrap();

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not.a.token".into(), "MALFORMED_TOKEN"),
        ("two parts", format!("{head}.{payload}"), "MALFORMED_TOKEN"),
        (
            "expired",
            certs.token_with("alice", READ_WRITE, |c| c.exp = now() - 3600),
            "TOKEN_EXPIRED",
        ),
        (
            "not yet valid",
            certs.token_with("alice", READ_WRITE, |c| c.nbf = now() + 3600),
            "TOKEN_NOT_YET_VALID",
        ),
        (
            "wrong issuer",
            certs.token_with("alice", READ_WRITE, |c| c.iss = "evil".into()),
            "WRONG_ISSUER",
        ),
        (
            "wrong audience",
            certs.token_with("alice", READ_WRITE, |c| c.aud = "other".into()),
            "WRONG_AUDIENCE",
        ),
        (
            "tampered signature",
            format!("{head}.{payload}.{}", URL_SAFE_NO_PAD.encode(&sig)),
            "BAD_SIGNATURE",
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{signature}",
                URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&claims("staff-1", "orders:admin")).unwrap())
            ),
            "BAD_SIGNATURE",
        ),
        (
            "another issuer's key (unknown kid)",
            other.token("alice", READ_WRITE),
            "UNKNOWN_KEY",
        ),
        (
            "another key claiming our kid",
            // Signed with the other key, under our key's kid.
            sign_es256(&other, &our_kid, &claims("alice", READ_WRITE)),
            "BAD_SIGNATURE",
        ),
        (
            "unknown kid",
            sign_es256(&certs, "nobody", &claims("alice", READ_WRITE)),
            "UNKNOWN_KEY",
        ),
        (
            "alg none",
            crafted(
                json!({"alg": "none", "typ": "JWT", "kid": our_kid}),
                &claims("alice", READ_WRITE),
                b"",
            ),
            "MALFORMED_TOKEN",
        ),
        (
            "HS256 signed with the public key (algorithm confusion)",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some(our_kid.clone());
                jsonwebtoken::encode(
                    &h,
                    &claims("alice", READ_WRITE),
                    &EncodingKey::from_secret(&public_jwks),
                )
                .unwrap()
            },
            "ALGORITHM_NOT_ALLOWED",
        ),
        (
            "no subject",
            sign_es256(
                &certs,
                &our_kid,
                &json!({"scope": READ_WRITE, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
            ),
            "MALFORMED_TOKEN",
        ),
        (
            "no expiry",
            sign_es256(
                &certs,
                &our_kid,
                &json!({"sub": "alice", "scope": READ_WRITE, "iss": ISSUER, "aud": AUDIENCE}),
            ),
            "MALFORMED_TOKEN",
        ),
        (
            "an ID token (it carries at_hash)",
            sign_es256(&certs, &our_kid, &{
                let mut id_token = claims("alice", READ_WRITE);
                id_token["at_hash"] = "77QmUPtjPfzWtF2AnpK9RQ".into();
                id_token
            }),
            "WRONG_TOKEN_TYPE",
        ),
        (
            "a logout token (typ logout+jwt)",
            {
                let pem = std::fs::read(certs.dev.path(grpc_platform::dev::SIGNING_KEY)).unwrap();
                let mut h = Header::new(Algorithm::ES256);
                h.typ = Some("logout+jwt".into());
                h.kid = Some(our_kid.clone());
                jsonwebtoken::encode(
                    &h,
                    &claims("alice", READ_WRITE),
                    &EncodingKey::from_ec_pem(&pem).unwrap(),
                )
                .unwrap()
            },
            "WRONG_TOKEN_TYPE",
        ),
        (
            "issued in the future (beyond the leeway)",
            certs.token_with("alice", READ_WRITE, |c| {
                c.iat = now() + 3600;
                c.exp = now() + 7200;
            }),
            "TOKEN_ISSUED_IN_FUTURE",
        ),
        (
            "a lifetime over auth.max_token_lifetime_secs",
            certs.token_with("alice", READ_WRITE, |c| c.exp = c.iat + 86_400 + 60),
            "TOKEN_LIFETIME_TOO_LONG",
        ),
        (
            "oversized (over the 8 KiB token limit)",
            "a".repeat(10 * 1024),
            "TOKEN_TOO_LARGE",
        ),
    ];
    for (what, token, reason) in &cases {
        let status = call_with(&server, &[("authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        let info = tonic_types::StatusExt::get_details_error_info(&status)
            .unwrap_or_else(|| panic!("{what}: ErrorInfo details"));
        assert_eq!(info.reason, *reason, "{what}");
        assert!(
            !status.message().contains(token.as_str()),
            "{what}: the token is never echoed"
        );
    }

    // Wrong places and schemes.
    for (what, metadata) in [
        ("no metadata", vec![]),
        ("wrong key", vec![("x-token", valid.as_str())]),
        (
            "basic scheme",
            vec![("authorization", "Basic YWxpY2U6c2VjcmV0")],
        ),
    ] {
        let status = call_with(&server, &metadata).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
    }
    // After all that, a valid call still works.
    let alice = server.alice().await;
    alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
}

#[tokio::test]
async fn scopes_gate_methods_and_scp_arrays_count() {
    let server = TestServer::start(Backend::sqlite()).await;
    let reader = server.client("alice", "orders:read").await;
    let err = reader
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.reason().as_deref(), Some("MISSING_SCOPE"));
    assert_eq!(err.error_metadata()["required_scope"], "orders:write");

    let writer = server.client("alice", "orders:write").await;
    let order = writer
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    assert_eq!(
        writer.get_order(&order.id).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        writer
            .watch_order_stream(&order.id, 0)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        writer.cancel_order(&order.id, 3).await.unwrap_err().code(),
        Code::Aborted
    );
    assert!(reader.get_order(&order.id).await.is_ok());

    // `scp` (array) works like `scope` (string).
    let certs = &server.certs;
    let token = sign_es256(
        certs,
        &kid(certs),
        &json!({"sub": "alice", "scp": ["orders:read", "orders:admin"], "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600}),
    );
    let staff_by_scp = server.client_with_token(&token).await;
    assert_eq!(
        staff_by_scp
            .advance_order(&order.id, 0)
            .await
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn health_needs_no_token() {
    let server = TestServer::start(Backend::sqlite()).await;
    let anonymous = server.anonymous().await;
    for name in ["", "readiness", "liveness", "orders.v1.OrderService"] {
        let status = anonymous.health(name).await.unwrap();
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{name:?}"
        );
    }
}

#[tokio::test]
async fn rs256_and_eddsa_pem_keys_and_development_hs256_secrets_verify() {
    // RSA and Ed25519 keys from PEM files (kid: the file stem) and an HS256 secret.
    let certs = Arc::new(Certs::new());
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let pem_dir = tempfile::tempdir().unwrap();
    let public = pem_dir.path().join("ed-key.pem");
    std::fs::write(&public, ed.public_key_pem()).unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa_public = pem_dir.path().join("rsa-key.pem");
    std::fs::write(&rsa_public, rsa.public_key_pem()).unwrap();
    let secret = "a-development-secret-of-at-least-32-bytes";
    let server = TestServer::start_with(certs.clone(), Backend::sqlite(), |s| {
        s.auth.public_keys = vec![public.clone(), rsa_public.clone()];
        s.auth.algorithms = vec![
            "ES256".into(),
            "RS256".into(),
            "EdDSA".into(),
            "HS256".into(),
        ];
        s.auth.hs256_secret = Some(secret.to_string().into());
        s.validate().unwrap();
    })
    .await;

    let ed_key = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap();
    let mut with_kid = Header::new(Algorithm::EdDSA);
    with_kid.kid = Some("ed-key".into());
    let without_kid = Header::new(Algorithm::EdDSA);
    for header in [with_kid, without_kid] {
        let token = jsonwebtoken::encode(&header, &claims("erin", READ_WRITE), &ed_key).unwrap();
        let erin = server.client_with_token(&token).await;
        erin.register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap();
    }
    let rsa_key = EncodingKey::from_rsa_pem(rsa.serialize_pem().as_bytes()).unwrap();
    let mut rs = Header::new(Algorithm::RS256);
    rs.kid = Some("rsa-key".into());
    let token = jsonwebtoken::encode(&rs, &claims("rita", READ_WRITE), &rsa_key).unwrap();
    server
        .client_with_token(&token)
        .await
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("hank", READ_WRITE),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    server
        .client_with_token(&hs)
        .await
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    // The ES256 JWKS key still works beside them.
    server
        .alice()
        .await
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();
    // An EdDSA token naming the ES256 key's kid is refused: key families never mix.
    let mut confused = Header::new(Algorithm::EdDSA);
    confused.kid = Some(kid(&certs));
    let token = jsonwebtoken::encode(&confused, &claims("erin", READ_WRITE), &ed_key).unwrap();
    let err = Client::get_order(&server.client_with_token(&token).await, "x")
        .await
        .unwrap_err();
    assert_eq!(err.reason().as_deref(), Some("ALGORITHM_NOT_ALLOWED"));
}

/// Every OrderService method's path with the scopes its proto declares, read
/// from the descriptor set the server is built from (not from the server's
/// own method table, which is what is being checked).
fn declared_scopes() -> Vec<(String, Vec<String>)> {
    let pool = prost_reflect::DescriptorPool::decode(orders::pb::FILE_DESCRIPTOR_SET).unwrap();
    let access = pool
        .get_extension_by_name("grpc_platform.v1.access")
        .expect("the access option is in the descriptor set");
    let service = pool
        .get_service_by_name("orders.v1.OrderService")
        .expect("OrderService is in the descriptor set");
    service
        .methods()
        .map(|method| {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let options = method.options();
            assert!(options.has_extension(&access), "{path} declares its access");
            let value = options.get_extension(&access);
            let scopes = value
                .as_message()
                .expect("the option is a message")
                .get_field_by_name("scopes")
                .map(|list| {
                    list.as_list()
                        .expect("scopes is a list")
                        .iter()
                        .map(|scope| scope.as_str().expect("a scope is a string").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (path, scopes)
        })
        .collect()
}

/// How a call to `path` ends, made the same way whatever the method's kind:
/// one default (empty) message is sent and the request half-closed, and the
/// response is read to its end. A refusal by auth comes before any handler
/// runs, in the response headers.
async fn raw_call(server: &TestServer, path: &str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.anonymous().await.channel());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(futures::stream::iter([()]));
    // Bounds the call should a handler wait for more than it is sent.
    request.set_timeout(std::time::Duration::from_secs(10));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    // `()` encodes as no bytes, the default value of every message, and
    // decodes any message by skipping its fields.
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap();
    let mut responses = match grpc.streaming(request, path, codec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match responses.message().await {
            Ok(Some(())) => {}
            Ok(None) => return tonic::Status::ok(""),
            Err(status) => return status,
        }
    }
}

#[tokio::test]
async fn the_scopes_the_server_enforces_are_the_ones_the_proto_declares() {
    let declared = declared_scopes();
    assert!(!declared.is_empty(), "OrderService has methods");
    for (path, scopes) in &declared {
        assert!(!scopes.is_empty(), "{path} declares a scope");
    }
    let all: std::collections::BTreeSet<&str> = declared
        .iter()
        .flat_map(|(_, scopes)| scopes.iter().map(String::as_str))
        .collect();

    let server = TestServer::start(Backend::sqlite()).await;
    for (path, scopes) in &declared {
        // Every scope there is but one the method declares: refused, naming it.
        for scope in scopes {
            let others: Vec<&str> = all.iter().copied().filter(|s| s != scope).collect();
            let token = server.certs.token("alice", &others.join(" "));
            let status = raw_call(&server, path, Some(&token)).await;
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{path} without {scope}: {status:?}"
            );
            let info = tonic_types::StatusExt::get_details_error_info(&status)
                .unwrap_or_else(|| panic!("{path}: ErrorInfo details"));
            assert_eq!(info.reason, "MISSING_SCOPE", "{path}");
            assert_eq!(info.metadata["required_scope"], *scope, "{path}");
        }
        // Only what the method declares: auth lets it through to the handler,
        // which answers what it makes of an empty request.
        let token = server.certs.token("alice", &scopes.join(" "));
        let status = raw_call(&server, path, Some(&token)).await;
        assert!(
            !matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ),
            "{path} with {scopes:?}: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_path_no_service_serves_needs_a_token() {
    let server = TestServer::start(Backend::sqlite()).await;
    let path = "/payments.v1.PaymentService/Pay";
    let status = raw_call(&server, path, None).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let token = server.certs.token("alice", READ_WRITE);
    let status = raw_call(&server, path, Some(&token)).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::{v1, v1alpha};

    let server = TestServer::start(Backend::sqlite()).await;
    // A client that sends no token, on the main (TLS) port.
    let channel = server.anonymous().await.channel();

    let mut health = HealthClient::new(channel.clone());
    let check = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status(), ServingStatus::Serving);
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let list = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let response = reflection
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        response.message_response
    else {
        panic!("v1: {response:?}");
    };
    assert!(
        services
            .service
            .iter()
            .any(|s| s.name == "orders.v1.OrderService"),
        "v1: {services:?}"
    );

    let list = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut reflection = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let response = reflection
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("a reflection answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(services)) =
        response.message_response
    else {
        panic!("v1alpha: {response:?}");
    };
    assert!(
        services
            .service
            .iter()
            .any(|s| s.name == "orders.v1.OrderService"),
        "v1alpha: {services:?}"
    );
}
