//! Key rotation without restarts and the verified-token cache (docs/reference.md "Authentication and
//! authorization"): a JWKS served over real HTTPS from inside the test
//! (its own CA: `auth.jwks_ca`), a JWKS file rewritten by atomic rename, and
//! tokens signed with keys the test adds and removes.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use http_body_util::Full;
use hyper::body::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orders::config::Settings;
use orders::sdk::pb;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::Code;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An ES256 signing key of the test's own, with its kid.
struct TestKey {
    kid: String,
    pem: String,
    jwk: serde_json::Value,
}

impl TestKey {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        Self {
            kid: kid.into(),
            pem: pair.serialize_pem(),
            jwk,
        }
    }

    fn token_until(&self, sub: &str, exp: i64) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "sub": sub, "scope": READ_WRITE, "iss": ISSUER, "aud": AUDIENCE,
            "iat": now(), "nbf": now(), "exp": exp,
        });
        let key = EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.token_until(sub, now() + 600)
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// A JWKS over HTTPS (HTTP/1.1, hyper) with the dev server certificate of
/// `certs`; counts the requests it answers.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(certs: &Certs, document: String) -> Self {
        let read_pem = |name: &str| std::fs::read(certs.dev.path(name)).unwrap();
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read_pem(
            grpc_platform::dev::SERVER_CERT,
        ))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read_pem(
            grpc_platform::dev::SERVER_KEY,
        ))
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/.well-known/jwks.json",
            listener.local_addr().unwrap().port()
        );
        let document = Arc::new(Mutex::new(document));
        let hits = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, doc, count) = (acceptor.clone(), doc.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_request| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().clone();
                        async move {
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            url,
            document,
            hits,
            task,
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A server whose keys come from `jwks` only (no JWKS file).
async fn server_with_url(
    certs: Arc<Certs>,
    jwks: &JwksServer,
    edit: impl FnOnce(&mut Settings),
) -> TestServer {
    let (url, ca) = (
        jwks.url.clone(),
        certs.dev.path(grpc_platform::dev::CA_CERT),
    );
    TestServer::start_with(certs, Backend::sqlite(), |s| {
        s.auth.jwks_file = None;
        s.auth.jwks_url = Some(url);
        s.auth.jwks_ca = Some(ca);
        edit(s);
        s.validate().expect("valid settings");
    })
    .await
}

/// The code and `ErrorInfo.reason` a GetOrder with `token` gets; NOT_FOUND
/// (for a random id) means the token was accepted.
async fn outcome(channel: tonic::transport::Channel, token: &str) -> (Code, String) {
    let mut raw = pb::order_service_client::OrderServiceClient::new(channel);
    let mut request = tonic::Request::new(pb::GetOrderRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = raw.get_order(request).await.unwrap_err();
    let reason = tonic_types::StatusExt::get_details_error_info(&status)
        .map(|info| info.reason)
        .unwrap_or_default();
    (status.code(), reason)
}

async fn accepted(server: &TestServer, token: &str) -> bool {
    let channel = server.anonymous().await.channel();
    outcome(channel, token).await.0 == Code::NotFound
}

/// Polls `check` every 100 ms until it holds, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_key_added_to_the_served_jwks_is_accepted_without_restart() {
    let certs = Arc::new(Certs::new());
    let (first, second) = (TestKey::new("first"), TestKey::new("second"));
    let jwks_server = JwksServer::start(&certs, jwks(&[&first])).await;
    // No rate limit here, to see both sides of the publication; the flood
    // test below checks the limit.
    let server = server_with_url(certs, &jwks_server, |s| {
        s.auth.jwks_min_refresh = Duration::ZERO
    })
    .await;
    assert_eq!(jwks_server.hits(), 1, "keys are fetched once at start");

    // (a) A token from a key in the JWKS works, through the whole stack.
    let alice = server.client_with_token(&first.token("alice")).await;
    alice
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .unwrap();

    // (b) A new key: refused while unpublished, accepted once published,
    // with no restart: its token makes the server fetch the JWKS again.
    assert_eq!(
        outcome(alice.channel(), &second.token("bob")).await,
        (Code::Unauthenticated, "UNKNOWN_KEY".into()),
        "not published yet"
    );
    assert_eq!(jwks_server.hits(), 2, "the unknown kid made one fetch");
    jwks_server.serve(jwks(&[&first, &second]));
    let bob = server.client_with_token(&second.token("bob")).await;
    bob.register_order(vec![item("B", 1, 1)], address("B"))
        .await
        .expect("the new key's token is accepted without a restart");
    assert_eq!(jwks_server.hits(), 3, "and one more once published");
    assert!(
        accepted(&server, &first.token("alice")).await,
        "the old key still works"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_key_removed_from_the_served_jwks_is_refused_after_the_periodic_refresh() {
    let certs = Arc::new(Certs::new());
    let (kept, removed) = (TestKey::new("kept"), TestKey::new("removed"));
    let jwks_server = JwksServer::start(&certs, jwks(&[&kept, &removed])).await;
    let server = server_with_url(certs, &jwks_server, |s| {
        s.auth.jwks_refresh = Some(Duration::from_secs(1))
    })
    .await;
    let channel = server.anonymous().await.channel();
    let doomed = removed.token("mallory");
    // Verified, and so cached, while its key is published.
    assert_eq!(outcome(channel.clone(), &doomed).await.0, Code::NotFound);
    assert_eq!(outcome(channel.clone(), &doomed).await.0, Code::NotFound);

    jwks_server.serve(jwks(&[&kept]));
    // (c) + cache: the periodic refresh drops the key, and with it the
    // cached verdict of its token.
    let refused = eventually(Duration::from_secs(5), || {
        let (channel, doomed) = (channel.clone(), doomed.clone());
        async move {
            outcome(channel, &doomed).await == (Code::Unauthenticated, "UNKNOWN_KEY".to_string())
        }
    })
    .await;
    assert!(
        refused,
        "a removed key's (cached) token is refused after the refresh"
    );
    assert!(
        accepted(&server, &kept.token("alice")).await,
        "the kept key still works"
    );
    // A failed refresh (the key server now answers garbage) keeps the last good keys.
    jwks_server.serve("{not json".into());
    let fetched = jwks_server.hits();
    assert!(
        eventually(Duration::from_secs(5), || async {
            jwks_server.hits() > fetched + 1
        })
        .await,
        "the periodic refresh goes on"
    );
    assert!(
        accepted(&server, &kept.token("alice")).await,
        "last good keys stay in force"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval() {
    let certs = Arc::new(Certs::new());
    let key = TestKey::new("real");
    let jwks_server = JwksServer::start(&certs, jwks(&[&key])).await;
    let server = server_with_url(certs, &jwks_server, |_| {}).await;
    let channel = server.anonymous().await.channel();
    let before = jwks_server.hits();

    let flood = (0..200).map(|i| {
        let forged = TestKey::new(&format!("made-up-{i}-{}", uuid::Uuid::new_v4()));
        let channel = channel.clone();
        async move { outcome(channel, &forged.token("mallory")).await }
    });
    let outcomes = futures::future::join_all(flood).await;
    for (i, got) in outcomes.iter().enumerate() {
        assert_eq!(
            *got,
            (Code::Unauthenticated, "UNKNOWN_KEY".to_string()),
            "forged token {i}"
        );
    }
    let fetches = jwks_server.hits() - before;
    assert!(
        (1..=2).contains(&fetches),
        "200 unknown kids made {fetches} JWKS fetches (rate limit: one per 10 s)"
    );
    assert!(
        accepted(&server, &key.token("alice")).await,
        "real tokens still work"
    );
    server.stop().await;
}

/// Replaces `path` the way a careful writer (or Kubernetes) does: write
/// beside it, then rename over it, so a reader never sees half a file.
fn atomic_write(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_rewritten_jwks_file_is_picked_up_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("jwks.json");
    let (old, new) = (TestKey::new("old"), TestKey::new("new"));
    atomic_write(&file, &jwks(&[&old]));
    let path = file.clone();
    let server = TestServer::start_with(Arc::new(Certs::new()), Backend::sqlite(), |s| {
        s.auth.jwks_file = Some(path);
    })
    .await;
    assert!(accepted(&server, &old.token("alice")).await);

    // (e) Add a key: its first token triggers the re-read. Keys we cannot
    // use beside it (an encryption key, an unknown key type) are skipped,
    // not a reason to refuse the whole set.
    let mut document: serde_json::Value = serde_json::from_str(&jwks(&[&old, &new])).unwrap();
    let keys = document["keys"].as_array_mut().unwrap();
    keys.insert(
        0,
        json!({"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc", "x": "AA", "y": "AA"}),
    );
    keys.push(json!({"kty": "quantum", "kid": "future"}));
    atomic_write(&file, &document.to_string());
    let client = server.client_with_token(&new.token("bob")).await;
    client
        .register_order(vec![item("A", 1, 1)], address("A"))
        .await
        .expect("a key added to the file is accepted without restart");
    server.stop().await;
}

#[tokio::test]
async fn verified_tokens_are_cached_until_they_expire_and_never_past_exp() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    let key = TestKey::new("k");
    atomic_write(&file, &jwks(&[&key]));
    let certs = Certs::new();
    let mut s = settings(&certs, &Backend::sqlite());
    s.auth.jwks_file = Some(file.clone());
    s.auth.leeway = Duration::ZERO;
    let verifier = s.verifier().await.unwrap();

    // Valid for two more seconds; verified in full once, then from the cache.
    let exp = now() + 2;
    let token = key.token_until("alice", exp);
    let first = verifier.verify(&token).unwrap();
    assert_eq!(verifier.cached_tokens(), 1);
    let again = verifier.verify(&token).unwrap();
    assert_eq!(first.subject(), again.subject());
    assert!(again.has_scope("orders:write") && !again.has_scope("orders:admin"));
    assert_eq!(verifier.cached_tokens(), 1, "a hit adds nothing");

    // Past `exp` (0 leeway), the cached verdict is not used.
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        verifier.verify(&token).unwrap_err(),
        grpc_platform::auth::AuthError::Expired
    );
    assert_eq!(verifier.cached_tokens(), 0, "the expired entry is gone");

    // A key change clears the cache, and a removed key's cached token fails.
    let other = TestKey::new("other");
    let token = key.token("alice");
    verifier.verify(&token).unwrap();
    assert_eq!(verifier.cached_tokens(), 1);
    atomic_write(&file, &jwks(&[&other]));
    verifier.refresh().await;
    assert_eq!(verifier.cached_tokens(), 0, "cleared on key change");
    assert_eq!(
        verifier.verify(&token).unwrap_err(),
        grpc_platform::auth::AuthError::UnknownKey
    );
    // An unchanged source does not clear it.
    verifier.verify(&other.token("bob")).unwrap();
    verifier.refresh().await;
    assert_eq!(verifier.cached_tokens(), 1, "same keys: cache kept");
}

#[tokio::test]
async fn cached_tokens_still_need_the_methods_scope() {
    let certs = Arc::new(Certs::new());
    let server = TestServer::start_with(certs.clone(), Backend::sqlite(), |_| {}).await;
    let reader = server.client("alice", "orders:read").await;
    // Twice: the second call is answered from the cache.
    for _ in 0..2 {
        assert_eq!(
            reader
                .get_order(&uuid::Uuid::now_v7().to_string())
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        let err = reader
            .register_order(vec![item("A", 1, 1)], address("A"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.reason().as_deref(), Some("MISSING_SCOPE"));
    }
    server.stop().await;
}

#[tokio::test]
async fn jwks_url_with_an_untrusted_certificate_or_plain_http_is_refused() {
    // The JWKS server's certificate is from another CA than auth.jwks_ca.
    let theirs = Certs::new();
    let key = TestKey::new("k");
    let jwks_server = JwksServer::start(&theirs, jwks(&[&key])).await;
    let certs = Certs::new();
    let mut s = settings(&certs, &Backend::sqlite());
    s.auth.jwks_file = None;
    s.auth.jwks_url = Some(jwks_server.url.clone());
    s.auth.jwks_ca = Some(certs.dev.path(grpc_platform::dev::CA_CERT));
    s.validate().unwrap();
    let err = s
        .verifier()
        .await
        .err()
        .expect("untrusted key server refused");
    assert!(
        format!("{err:#}").contains("cannot fetch the JWKS"),
        "{err:#}"
    );
    assert_eq!(
        jwks_server.hits(),
        0,
        "no request went out over an untrusted connection"
    );

    s.auth.jwks_url = Some(jwks_server.url.replace("https://", "http://"));
    let problems = s.validate().unwrap_err().to_string();
    assert!(
        problems.contains("auth.jwks_url: must be an https:// URL"),
        "{problems}"
    );
}

#[tokio::test]
async fn the_periodic_refresh_stops_with_the_application() {
    let certs = Arc::new(Certs::new());
    let key = TestKey::new("k");
    let jwks_server = JwksServer::start(&certs, jwks(&[&key])).await;
    let server = server_with_url(certs, &jwks_server, |s| {
        s.auth.jwks_refresh = Some(Duration::from_secs(1))
    })
    .await;
    assert!(accepted(&server, &key.token("alice")).await);
    assert!(
        eventually(Duration::from_secs(5), || async { jwks_server.hits() >= 3 }).await,
        "the JWKS is re-read every second while the server runs"
    );
    server.stop().await;
    // A fetch may have been under way at the stop; after that, silence.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_stop = jwks_server.hits();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        jwks_server.hits(),
        at_stop,
        "no JWKS fetch after the Application stopped"
    );
}
