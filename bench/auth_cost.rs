//! `bench-auth-cost`: what authenticating one call costs, both paths: a full
//! check (ES256 signature and claims, the cache off) and a hit in the
//! verified-token cache (SHA-256 of the token and a lookup). `bench/compare`
//! divides the cache hit by the full service's CPU time per call to check
//! the "authentication is at most 2 % of a call" target.
//!
//! The same measurement as `cargo bench --bench auth_verify`, as a binary so
//! it builds with the release binaries instead of compiling every
//! dev-dependency; `--json` prints one object for scripts.
#![forbid(unsafe_code)]

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

fn main() -> anyhow::Result<()> {
    let json = std::env::args().any(|a| a == "--json");
    // A fresh key set of our own, removed at the end: never the caller's.
    let dir = std::env::temp_dir().join(format!("orders-auth-cost-{}", std::process::id()));
    let certs = DevCerts::new(&dir, orders::startup::SERVICE_NAME);
    certs.generate()?;
    let result = measure(&certs);
    let _ = std::fs::remove_dir_all(&dir);
    let (full, cached) = result?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "full_check_us": full.as_secs_f64() * 1e6,
                "cache_hit_us": cached.as_secs_f64() * 1e6,
            })
        );
    } else {
        println!("full check (ES256 + claims)  {full:>10.2?} per call");
        println!("token cache hit              {cached:>10.2?} per call");
    }
    Ok(())
}

fn measure(certs: &DevCerts) -> anyhow::Result<(Duration, Duration)> {
    let now = chrono::Utc::now().timestamp();
    let token = certs.token(&DevClaims {
        sub: "alice".into(),
        scope: "orders:read orders:write".into(),
        iss: "bench".into(),
        aud: "orders".into(),
        iat: now,
        nbf: now,
        exp: now + 3600,
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let verifier = |cache_size: usize| {
        let mut s = Settings::for_environment(Environment::Test);
        s.tls.enabled = false;
        s.auth.issuer = "bench".into();
        s.auth.audience = "orders".into();
        s.auth.jwks_file = Some(certs.path(grpc_platform::dev::JWKS));
        s.auth.token_cache_size = cache_size;
        runtime.block_on(s.verifier())
    };
    let full = verifier(0)?;
    let cached = verifier(10_000)?;
    cached.verify(&token)?;
    let full_cost = per_call(2_000, || {
        black_box(full.verify(black_box(&token)).expect("a valid token"));
    });
    let cached_cost = per_call(200_000, || {
        black_box(cached.verify(black_box(&token)).expect("a valid token"));
    });
    Ok((full_cost, cached_cost))
}
