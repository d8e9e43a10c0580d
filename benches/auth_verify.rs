//! The per-call cost of authentication, both paths: a full check
//! (ES256 signature, claims) against a hit in the verified-token cache
//! (SHA-256 of the token and a hash lookup).
//!
//! `cargo bench --bench auth_verify` prints one line per path. Hand-written
//! timing rather than criterion: the point is the order of magnitude between
//! the two paths, which a plain loop shows, and criterion would add a large
//! dependency tree to every build of the benches.

use grpc_platform::dev::{DevCerts, DevClaims};
use orders::config::{Environment, Settings};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn per_call(iterations: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..iterations / 10 {
        f(); // warm-up
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCerts::new(dir.path(), orders::startup::SERVICE_NAME);
    certs.generate().unwrap();
    let now = chrono::Utc::now().timestamp();
    let token = certs
        .token(&DevClaims {
            sub: "alice".into(),
            scope: "orders:read orders:write".into(),
            iss: "bench".into(),
            aud: "orders".into(),
            iat: now,
            nbf: now,
            exp: now + 3600,
        })
        .unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = |cache_size: usize| {
        let mut s = Settings::for_environment(Environment::Test);
        s.tls.enabled = false;
        s.auth.issuer = "bench".into();
        s.auth.audience = "orders".into();
        s.auth.jwks_file = Some(certs.path(grpc_platform::dev::JWKS));
        s.auth.token_cache_size = cache_size;
        runtime.block_on(s.verifier()).unwrap()
    };
    let full = verifier(0);
    let cached = verifier(10_000);
    cached.verify(&token).unwrap();

    let full_cost = per_call(2_000, || {
        black_box(full.verify(black_box(&token)).unwrap());
    });
    let cached_cost = per_call(200_000, || {
        black_box(cached.verify(black_box(&token)).unwrap());
    });
    println!("auth_verify/full_check   {:>10.2?} per call", full_cost);
    println!("auth_verify/cache_hit    {:>10.2?} per call", cached_cost);
    println!(
        "auth_verify/speedup      {:>10.0}x",
        full_cost.as_secs_f64() / cached_cost.as_secs_f64()
    );
}
