//! Property-based fuzzing of the code that reads untrusted input:
//! the proto → domain conversion, token and `authorization` parsing, and the
//! metadata/framing parsers of the middleware. cargo-fuzz needs a nightly
//! toolchain; proptest runs on stable, inside `cargo test`.
//!
//! Each property checks the code against an oracle written from
//! the API reference (not from the implementation), besides "never panics".
//!
//! - CI runs a bounded number of cases per property (256, fewer for the
//!   expensive ones). Run longer with proptest's own variable, e.g.
//!   `PROPTEST_CASES=100000 cargo test --release --test properties`.
//! - The committed corpus: `proptest-regressions/properties.txt` (seeds of
//!   past failures, replayed first on every run; proptest appends new ones
//!   there) and the hand-written `seed_*` tests at the end of this file.
//! - Seeds the properties found: a `grpc-timeout` string ending in a
//!   multi-byte character (must not panic), and a signed token whose `iss`
//!   is an array holding the issuer (must be refused). Both have `seed_*`
//!   tests.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use grpc_platform::auth::{
    AuthError, KeySet, KeySource, TokenRules, TokenTypes, Verifier, VerifierOptions,
};
use grpc_platform::dev::{DevCerts, DevClaims};
use grpc_platform::middleware::MessageCounter;
use grpc_platform::middleware::deadline::parse_grpc_timeout;
use jsonwebtoken::{Algorithm, EncodingKey};
use orders::domain::NewOrder;
use orders::sdk::pb;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

const ISSUER: &str = "orders-test";
const AUDIENCE: &str = "orders";
/// The verifiers' `max_lifetime_secs`: the default of
/// `auth.max_token_lifetime_secs`.
const MAX_LIFETIME: u64 = 86_400;

/// CI's bound, unless `PROPTEST_CASES` asks for more (or fewer).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/properties.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// =====================================================================
// 1. proto → domain: `NewOrder::try_from(pb::RegisterOrderRequest)`
// =====================================================================

/// The contract's limits (the proto's field comments and docs/reference.md), written
/// independently of `src/domain`. Returns every violated field path.
///
/// Readings of the contract text, stated so they can be argued with:
/// - "characters" are Unicode scalar values (`char`s), not bytes;
/// - `postal_code` "letters, digits": Unicode letters (`is_alphabetic`) and
///   numerals (`is_numeric`), the space U+0020 and `-`;
/// - the service also refuses a `street`, `city` or `postal_code` made only
///   of whitespace, which the contract does not say: a stricter reading this
///   oracle adopts (`BLANK_IS_EMPTY`) and the report flags;
/// - `request_id` "a UUID": the hyphenated form, also in simple (32 hex),
///   braced and `urn:uuid:` spelling; empty means "not given".
fn oracle(req: &pb::RegisterOrderRequest) -> BTreeSet<String> {
    const BLANK_IS_EMPTY: bool = true;
    let mut bad = BTreeSet::new();
    let chars = |s: &str| s.chars().count();
    let blank = |s: &str| BLANK_IS_EMPTY && s.chars().all(char::is_whitespace);
    if req.items.is_empty() || req.items.len() > 100 {
        bad.insert("items".to_string());
    }
    for (i, item) in req.items.iter().enumerate() {
        let sku_ok = (1..=64).contains(&chars(&item.sku))
            && item
                .sku
                .chars()
                .all(|c| matches!(c, 'A'..='Z' | '0'..='9' | '-'));
        if !sku_ok {
            bad.insert(format!("items[{i}].sku"));
        }
        if !(1..=1000).contains(&item.quantity) {
            bad.insert(format!("items[{i}].quantity"));
        }
        if !(0..=10_000_000).contains(&item.unit_price_cents) {
            bad.insert(format!("items[{i}].unit_price_cents"));
        }
    }
    match &req.address {
        None => {
            bad.insert("address".to_string());
        }
        Some(a) => {
            for (name, value) in [("street", &a.street), ("city", &a.city)] {
                if !(1..=200).contains(&chars(value)) || blank(value) {
                    bad.insert(format!("address.{name}"));
                }
            }
            if !(1..=1_000_000).contains(&a.number) {
                bad.insert("address.number".to_string());
            }
            let p = &a.postal_code;
            let postal_ok = (1..=16).contains(&chars(p))
                && !blank(p)
                && p.chars()
                    .all(|c| c.is_alphabetic() || c.is_numeric() || c == ' ' || c == '-');
            if !postal_ok {
                bad.insert("address.postal_code".to_string());
            }
        }
    }
    if !req.request_id.is_empty() && !is_uuid_text(&req.request_id) {
        bad.insert("request_id".to_string());
    }
    bad
}

fn is_uuid_text(s: &str) -> bool {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let hyphenated = |s: &str| {
        let groups: Vec<&str> = s.split('-').collect();
        s.len() == 36
            && groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups.iter().all(|g| hex(g))
    };
    (s.len() == 32 && hex(s))
        || hyphenated(s)
        || s.strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .is_some_and(hyphenated)
        || s.strip_prefix("urn:uuid:").is_some_and(hyphenated)
}

/// Whether a violation path has one of the forms the contract's clients see.
fn well_formed_path(path: &str) -> bool {
    if matches!(
        path,
        "items"
            | "address"
            | "address.street"
            | "address.number"
            | "address.city"
            | "address.postal_code"
            | "request_id"
    ) {
        return true;
    }
    let Some(rest) = path.strip_prefix("items[") else {
        return false;
    };
    let Some((index, field)) = rest.split_once("].") else {
        return false;
    };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && (index == "0" || !index.starts_with('0'))
        && matches!(field, "sku" | "quantity" | "unit_price_cents")
}

/// Characters that sit on either side of every rule: valid in SKUs, valid
/// only in postal codes, whitespace, control characters, multi-byte text.
const CHAR_POOL: &[char] = &[
    'A', 'Z', 'Q', '0', '9', '-', ' ', 'a', 'z', 'ü', 'ß', 'É', 'ж', '٣', '²', '\t', '\n', '\r',
    '\0', '\u{7f}', '\u{a0}', '\u{200b}', '\u{301}', '_', '.', '/', '\'', '"', '😀', '\u{fffd}',
];

/// Arbitrary text with lengths around every bound (0, 1, 16, 17, 64, 65,
/// 200, 201) and from several alphabets.
fn text() -> impl Strategy<Value = String> {
    let lengths = prop_oneof![
        0usize..4,
        prop::sample::select(vec![15usize, 16, 17, 63, 64, 65, 199, 200, 201]),
        0usize..260,
    ];
    let alphabets = prop_oneof![
        // Each alphabet as one string whose chars are drawn.
        Just("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-"),
        Just("ABC 123-xyzüß"),
        Just("üé ж漢"),
        Just(" \t\u{a0}"),
    ];
    prop_oneof![
        3 => (alphabets, lengths.clone()).prop_flat_map(|(alphabet, n)| {
            let chars: Vec<char> = alphabet.chars().collect();
            prop::collection::vec(prop::sample::select(chars), n)
                .prop_map(|v| v.into_iter().collect::<String>())
        }),
        2 => lengths.prop_flat_map(|n| {
            prop::collection::vec(prop::sample::select(CHAR_POOL), n)
                .prop_map(|v| v.into_iter().collect::<String>())
        }),
        2 => any::<String>(),
        1 => "[A-Z0-9-]{1,64}",
    ]
}

fn quantity() -> impl Strategy<Value = i32> {
    prop_oneof![
        prop::sample::select(vec![i32::MIN, -1, 0, 1, 2, 999, 1000, 1001, i32::MAX]),
        1..=1000i32,
        any::<i32>(),
    ]
}

fn cents() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            i64::MIN,
            -1,
            0,
            1,
            9_999_999,
            10_000_000,
            10_000_001,
            i64::MAX
        ]),
        0..=10_000_000i64,
        any::<i64>(),
    ]
}

fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        prop::sample::select(vec![
            i64::MIN,
            -1,
            0,
            1,
            999_999,
            1_000_000,
            1_000_001,
            i64::MAX
        ]),
        1..=1_000_000i64,
        any::<i64>(),
    ]
}

fn request_id() -> impl Strategy<Value = String> {
    let uuid = any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string());
    prop_oneof![
        3 => Just(String::new()),
        2 => uuid.clone(),
        1 => uuid.clone().prop_map(|u| u.to_uppercase()),
        1 => uuid.clone().prop_map(|u| u.replace('-', "")),
        1 => uuid.clone().prop_map(|u| format!("{{{u}}}")),
        1 => uuid.clone().prop_map(|u| format!("urn:uuid:{u}")),
        1 => uuid.prop_map(|u| u[..35].to_string()),
        1 => "[0-9a-f-]{30,40}",
        1 => text(),
    ]
}

fn item() -> impl Strategy<Value = pb::LineItem> {
    (text(), quantity(), cents()).prop_map(|(sku, quantity, unit_price_cents)| pb::LineItem {
        sku,
        quantity,
        unit_price_cents,
    })
}

fn valid_item() -> impl Strategy<Value = pb::LineItem> {
    ("[A-Z0-9-]{1,64}", 1..=1000i32, 0..=10_000_000i64).prop_map(|(sku, quantity, cents)| {
        pb::LineItem {
            sku,
            quantity,
            unit_price_cents: cents,
        }
    })
}

fn address() -> impl Strategy<Value = Option<pb::Address>> {
    prop::option::weighted(
        0.9,
        (text(), number(), text(), text()).prop_map(|(street, number, city, postal_code)| {
            pb::Address {
                street,
                number,
                city,
                postal_code,
            }
        }),
    )
}

/// Requests of every shape: mostly-valid items (so some requests pass), any
/// number of items from 0 to 149, any address.
fn request() -> impl Strategy<Value = pb::RegisterOrderRequest> {
    let items = prop_oneof![
        3 => prop::collection::vec(prop_oneof![4 => valid_item(), 1 => item()], 0..6),
        1 => prop::collection::vec(prop_oneof![9 => valid_item(), 1 => item()], 0..150),
        1 => prop::collection::vec(valid_item(), 98..103),
    ];
    (items, address(), request_id()).prop_map(|(items, address, request_id)| {
        pb::RegisterOrderRequest {
            items,
            address,
            request_id,
        }
    })
}

/// Requests that meet every limit, built from the contract's ranges.
fn valid_request() -> impl Strategy<Value = pb::RegisterOrderRequest> {
    let line = "[A-Za-zäöüß0-9 ,.'/-]{0,199}[A-Za-zäöü0-9]";
    (
        prop::collection::vec(valid_item(), 1..=100),
        line,
        1..=1_000_000i64,
        line,
        "[A-Z0-9 -]{0,15}[A-Z0-9]",
        prop_oneof![
            Just(String::new()),
            any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string())
        ],
    )
        .prop_map(|(items, street, number, city, postal_code, request_id)| {
            pb::RegisterOrderRequest {
                items,
                address: Some(pb::Address {
                    street,
                    number,
                    city,
                    postal_code,
                }),
                request_id,
            }
        })
}

fn check_conversion(req: pb::RegisterOrderRequest) -> Result<(), TestCaseError> {
    let expected = oracle(&req);
    let count = req.items.len();
    match NewOrder::try_from(req.clone()) {
        Ok(order) => {
            prop_assert!(
                expected.is_empty(),
                "accepted, but the contract refuses {expected:?}: {req:?}"
            );
            // The idempotency key is kept, in its canonical spelling.
            match order.request_id() {
                None => prop_assert!(req.request_id.is_empty()),
                Some(id) => {
                    let canonical =
                        uuid::Uuid::try_parse(&req.request_id).map(|u| u.hyphenated().to_string());
                    prop_assert_eq!(Ok(id.as_str().to_string()), canonical);
                }
            }
        }
        Err(violations) => {
            let paths: Vec<String> = violations.iter().map(|v| v.field.clone()).collect();
            for p in &paths {
                prop_assert!(well_formed_path(p), "unexpected path {p:?}");
            }
            let got: BTreeSet<String> = paths.iter().cloned().collect();
            prop_assert_eq!(
                got.len(),
                paths.len(),
                "one violation per field: {:?}",
                paths
            );
            // Past 100 items the request is refused as a whole ("items");
            // the items beyond the hundredth need not be looked at one by one.
            let over = count > 100;
            let relevant: BTreeSet<String> = expected
                .iter()
                .filter(|p| !over || !beyond_hundredth(p))
                .cloned()
                .collect();
            prop_assert!(
                !expected.is_empty(),
                "refused {got:?}, but the contract allows it: {req:?}"
            );
            prop_assert!(
                got.is_subset(&expected) && relevant.is_subset(&got),
                "violations {got:?}, the contract's {expected:?}"
            );
        }
    }
    Ok(())
}

fn beyond_hundredth(path: &str) -> bool {
    path.strip_prefix("items[")
        .and_then(|r| r.split_once(']'))
        .and_then(|(i, _)| i.parse::<usize>().ok())
        .is_some_and(|i| i >= 100)
}

proptest! {
    #![proptest_config(config(256))]

    /// Never panics; `Ok` exactly when the contract's limits hold, and on
    /// `Err` every violation (and only those) with its contract path.
    #[test]
    fn conversion_agrees_with_the_contract(req in request()) {
        check_conversion(req)?;
    }

    /// Requests built from the contract's ranges always convert.
    #[test]
    fn requests_within_the_limits_convert(req in valid_request()) {
        let expected = oracle(&req);
        prop_assert!(expected.is_empty(), "the generator made {expected:?}");
        check_conversion(req)?;
    }

    /// Spoiling exactly one field of a valid request is reported at exactly
    /// that field.
    #[test]
    fn one_spoiled_field_is_reported_at_its_path(
        req in valid_request(),
        which in 0usize..9,
        index in any::<prop::sample::Index>(),
        junk in text(),
    ) {
        let mut req = req;
        let i = index.index(req.items.len());
        let path = match which {
            0 => { req.items[i].sku = format!("{}a", req.items[i].sku); format!("items[{i}].sku") }
            1 => { req.items[i].quantity = 0; format!("items[{i}].quantity") }
            2 => { req.items[i].unit_price_cents = -1; format!("items[{i}].unit_price_cents") }
            3 => { req.address.as_mut().unwrap().street = "x".repeat(201); "address.street".into() }
            4 => { req.address.as_mut().unwrap().city.clear(); "address.city".into() }
            5 => { req.address.as_mut().unwrap().number = 0; "address.number".into() }
            6 => { req.address.as_mut().unwrap().postal_code = "3511_AB".into(); "address.postal_code".into() }
            7 => { req.request_id = format!("x{junk}"); "request_id".into() }
            _ => { req.address = None; "address".into() }
        };
        let err = NewOrder::try_from(req).expect_err("a spoiled field is refused");
        let paths: Vec<String> = err.iter().map(|v| v.field.clone()).collect();
        prop_assert_eq!(paths, vec![path]);
    }
}

// =====================================================================
// 2. Tokens: `Verifier::verify` and `Verifier::authenticate`
// =====================================================================

struct Tokens {
    _dir: tempfile::TempDir,
    /// Fixed keys, no cache.
    plain: Verifier,
    /// As the server builds it: from the JWKS file, with the token cache.
    cached: Verifier,
    signing_key: EncodingKey,
    kid: String,
    valid: String,
}

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let dev = DevCerts::new(dir.path(), orders::startup::SERVICE_NAME);
        dev.generate().unwrap();
        let jwks = dev.path(grpc_platform::dev::JWKS);
        let rules = TokenRules {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            algorithms: vec![Algorithm::ES256, Algorithm::RS256, Algorithm::EdDSA],
            leeway_secs: 0,
            token_types: TokenTypes::default(),
            max_lifetime_secs: Some(MAX_LIFETIME),
        };
        let sources = vec![KeySource::JwksFile(jwks)];
        let plain = Verifier::new(rules.clone(), KeySet::load(&sources).unwrap());
        let cached = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(Verifier::from_sources(
                rules,
                sources,
                VerifierOptions {
                    refresh_interval: None,
                    ..VerifierOptions::default()
                },
            ))
            .unwrap();
        let now = unix_now();
        let valid = dev
            .token(&DevClaims {
                sub: "alice".into(),
                scope: "orders:read orders:write".into(),
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                iat: now,
                nbf: now,
                // Long enough for `PROPTEST_CASES=100000` runs.
                exp: now + 24 * 3600,
            })
            .unwrap();
        let kid = jsonwebtoken::decode_header(&valid).unwrap().kid.unwrap();
        let pem = std::fs::read(dev.path(grpc_platform::dev::SIGNING_KEY)).unwrap();
        let signing_key = EncodingKey::from_ec_pem(&pem).unwrap();
        // Both accept it, and the cached one now holds it.
        plain.verify(&valid).expect("the valid token verifies");
        cached.verify(&valid).expect("the valid token verifies");
        Tokens {
            _dir: dir,
            plain,
            cached,
            signing_key,
            kid,
            valid,
        }
    })
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.payload.signature`, ES256-signed with the trusted key whatever
/// the header claims, so a verifier gets past the signature to the claims.
fn signed(header: &Value, payload: &[u8]) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(payload));
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &tokens().signing_key, Algorithm::ES256)
            .unwrap();
    format!("{message}.{signature}")
}

/// Both verifiers; they must agree.
fn verify_both(
    token: &str,
) -> Result<Result<grpc_platform::auth::Principal, AuthError>, TestCaseError> {
    let t = tokens();
    let plain = t.plain.verify(token);
    let cached = t.cached.verify(token);
    prop_assert_eq!(
        plain.as_ref().err(),
        cached.as_ref().err(),
        "the cached verifier disagrees"
    );
    Ok(plain)
}

/// Arbitrary JSON, with the keys a JWT header or claim set has mixed in.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "ES256", "HS256", "RS256", "none", "None", "EdDSA", "JWT", ISSUER, AUDIENCE,
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "alg", "kid", "typ", "crit", "jku", "jwk", "x5u", "sub", "iss", "aud", "exp",
                "nbf", "iat", "scope", "scp",
            ])
            .prop_map(String::from),
            ".{0,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One claim's variants; `None` leaves the claim out.
fn variants(now: i64) -> [Vec<Option<Value>>; 8] {
    [
        // sub
        vec![
            None,
            Some(json!("alice")),
            Some(json!("")),
            Some(json!(42)),
            Some(Value::Null),
            Some(json!(["alice"])),
        ],
        // iss
        vec![
            None,
            Some(json!(ISSUER)),
            Some(json!("evil")),
            Some(json!(1)),
            Some(Value::Null),
            Some(json!(["evil"])),
            Some(json!([ISSUER])),
            Some(json!(["evil", ISSUER])),
        ],
        // aud
        vec![
            None,
            Some(json!(AUDIENCE)),
            Some(json!("other")),
            Some(json!([AUDIENCE])),
            Some(json!(["other", AUDIENCE])),
            Some(json!([])),
            Some(json!([7])),
            Some(json!(7)),
        ],
        // exp
        vec![
            None,
            Some(json!(now + 600)),
            Some(json!(now - 3600)),
            Some(json!((now + 600).to_string())),
            Some(json!(now as f64 + 600.5)),
            Some(json!(-1)),
            Some(Value::Null),
            Some(json!(u64::MAX)),
            Some(json!(now + MAX_LIFETIME as i64 * 2)),
        ],
        // iat
        vec![
            None,
            Some(json!(now)),
            Some(json!(now - 3600)),
            Some(json!(now - MAX_LIFETIME as i64 * 3)),
            Some(json!(now + 3600)),
            Some(json!(now.to_string())),
            Some(json!(now as f64 - 0.5)),
            Some(json!(-1)),
            Some(Value::Null),
        ],
        // nbf
        vec![
            None,
            Some(json!(now - 10)),
            Some(json!(now + 3600)),
            Some(json!(now as f64 - 10.5)),
            Some(json!("x")),
            Some(json!(-5)),
            Some(Value::Null),
        ],
        // scope
        vec![
            None,
            Some(json!("orders:read orders:write")),
            Some(json!("")),
            Some(json!(5)),
            Some(Value::Null),
            Some(json!(["orders:read"])),
        ],
        // scp
        vec![
            None,
            Some(json!(["orders:admin"])),
            Some(json!("orders:admin")),
            Some(json!([1])),
            Some(Value::Null),
            Some(json!([])),
        ],
    ]
}

const CLAIMS: [&str; 8] = ["sub", "iss", "aud", "exp", "iat", "nbf", "scope", "scp"];

/// Whether the contract (section 3, and RFC 7519 for the claim types) lets a
/// correctly signed token with these claims in. Readings:
/// - `exp` is a non-negative whole number (a fractional NumericDate is
///   refused: the service reads `exp` as an integer), in the future;
/// - `iat` absent, or a non-negative whole number (read as `exp` is; `null`
///   refused) not in the future;
/// - the lifetime, `exp - iat`, or `exp - now` without `iat`, at most
///   [`MAX_LIFETIME`];
/// - `nbf` absent, or a non-negative number (rounded) not in the future
///   (`null` is not a NumericDate: refused);
/// - `sub` a non-empty string; `aud` the audience or an array holding it;
/// - `iss` the issuer, one string (RFC 7519; an array holding it is refused);
/// - `scope` absent/null or a string; `scp` absent/null or an array of strings.
fn claims_accepted(claims: &serde_json::Map<String, Value>, now: i64) -> bool {
    let get = |k: &str| claims.get(k).filter(|v| !v.is_null());
    let exp = get("exp").and_then(Value::as_u64);
    let exp_ok = exp.is_some_and(|exp| exp as i128 >= now as i128);
    let iat = claims.get("iat").map(Value::as_u64);
    let iat_ok = match iat {
        None => true,
        Some(iat) => iat.is_some_and(|iat| iat as i128 <= now as i128),
    };
    let issued = iat.flatten().map_or(now as i128, |iat| iat as i128);
    let lifetime_ok = exp.is_some_and(|exp| exp as i128 - issued <= MAX_LIFETIME as i128);
    // A null `nbf` is not a NumericDate: refused (jsonwebtoken's reading too).
    let nbf_ok = match claims.get("nbf") {
        None => true,
        Some(v) => match (v.as_u64(), v.as_f64()) {
            (Some(n), _) => n as i128 <= now as i128,
            (None, Some(f)) => f >= 0.0 && f.round() <= now as f64,
            _ => false,
        },
    };
    let sub_ok = get("sub")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty());
    let iss_ok = match get("iss") {
        Some(Value::String(s)) => s == ISSUER,
        _ => false,
    };
    let aud_ok = match get("aud") {
        Some(Value::String(s)) => s == AUDIENCE,
        Some(Value::Array(a)) => a.iter().all(Value::is_string) && a.iter().any(|v| v == AUDIENCE),
        _ => false,
    };
    let scope_ok = get("scope").is_none_or(Value::is_string);
    let scp_ok =
        get("scp").is_none_or(|v| v.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
    exp_ok && iat_ok && lifetime_ok && nbf_ok && sub_ok && iss_ok && aud_ok && scope_ok && scp_ok
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary strings are never tokens, and never a panic.
    #[test]
    fn verify_refuses_arbitrary_strings(s in any::<String>()) {
        prop_assert!(verify_both(&s)?.is_err());
    }

    /// Three base64url parts that decode to anything.
    #[test]
    fn verify_refuses_arbitrary_three_part_tokens(
        s in "[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,200}\\.[A-Za-z0-9_-]{0,120}",
    ) {
        prop_assert!(verify_both(&s)?.is_err());
    }

    /// Arbitrary header and payload JSON, with a random or a real ES256
    /// signature: never a panic, never accepted (unless the header is a
    /// valid ES256 header and the claims pass, checked below).
    #[test]
    fn verify_never_panics_on_arbitrary_json(
        header in json_value(),
        payload in json_value(),
        sig in prop::collection::vec(any::<u8>(), 0..80),
        really_sign in any::<bool>(),
    ) {
        let token = if really_sign {
            signed(&header, payload.to_string().as_bytes())
        } else {
            format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(payload.to_string().as_bytes()), b64(&sig))
        };
        // A random header is never a valid {"alg":"ES256","kid":…} one.
        prop_assert!(verify_both(&token)?.is_err(), "accepted {token}");
    }

    /// A correctly signed token is accepted exactly when its claims meet the
    /// contract; an accepted one carries the claimed subject and scopes.
    #[test]
    fn signed_claims_are_judged_by_the_contract(
        picks in prop::array::uniform8(any::<prop::sample::Index>()),
        extra in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
        with_kid in any::<bool>(),
    ) {
        let now = unix_now();
        let all = variants(now);
        let mut claims = serde_json::Map::new();
        for (k, v) in extra {
            if !CLAIMS.contains(&k.as_str()) {
                claims.insert(k, v);
            }
        }
        for ((name, options), pick) in CLAIMS.iter().zip(all.iter()).zip(picks.iter()) {
            if let Some(v) = &options[pick.index(options.len())] {
                claims.insert((*name).to_string(), v.clone());
            }
        }
        let header = if with_kid {
            json!({"alg": "ES256", "typ": "JWT", "kid": tokens().kid})
        } else {
            json!({"alg": "ES256", "typ": "JWT"})
        };
        let token = signed(&header, Value::Object(claims.clone()).to_string().as_bytes());
        let want = claims_accepted(&claims, now);
        let got = verify_both(&token)?;
        prop_assert_eq!(got.is_ok(), want, "claims {:?}: {:?}", claims, got.as_ref().err());
        if let Ok(principal) = got {
            prop_assert_eq!(principal.subject(), claims["sub"].as_str().unwrap());
            if let Some(Value::String(s)) = claims.get("scope") {
                for scope in s.split_whitespace() {
                    prop_assert!(principal.has_scope(scope));
                }
            }
            if let Some(Value::Array(a)) = claims.get("scp") {
                for scope in a {
                    prop_assert!(principal.has_scope(scope.as_str().unwrap()));
                }
            }
            prop_assert!(!principal.has_scope("orders:nothing"));
        }
    }

    /// A valid token with one byte changed is never accepted, by the plain
    /// verifier nor by the cached one (which holds the original).
    #[test]
    fn a_valid_token_with_one_byte_flipped_is_refused(
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let t = tokens();
        let mut bytes = t.valid.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(token) = std::str::from_utf8(&bytes) {
            prop_assert!(verify_both(token)?.is_err(), "accepted with byte {} ^ {:#x}", i, flip);
        }
        // Through the header path too, where the bytes make a header value.
        if let Ok(value) = http::HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &bytes].concat()) {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value);
            prop_assert!(t.plain.authenticate(&headers).is_err());
            prop_assert!(t.cached.authenticate(&headers).is_err());
        }
        prop_assert!(t.cached.verify(&t.valid).is_ok(), "the original still verifies");
    }

    /// `authorization` values of any bytes: never a panic; the outcome
    /// follows the header's form.
    #[test]
    fn authenticate_never_panics_on_arbitrary_headers(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            ".{0,64}".prop_map(String::into_bytes),
            "(Bearer|bearer|BEARER|Basic|Token)( |  |\t)?[ -~]{0,80}".prop_map(String::into_bytes),
            (9000usize..9300).prop_map(|n| [b"Bearer ".as_slice(), &vec![b'a'; n]].concat()),
        ],
        also_valid in any::<bool>(),
    ) {
        let t = tokens();
        let Ok(value) = http::HeaderValue::from_bytes(&raw) else {
            return Ok(());
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        if also_valid {
            // A second authorization header, valid: neither counts, since a
            // proxy in front may have read either.
            headers.append(
                http::header::AUTHORIZATION,
                format!("Bearer {}", t.valid).parse().unwrap(),
            );
        }
        let plain = t.plain.authenticate(&headers);
        let cached = t.cached.authenticate(&headers);
        prop_assert_eq!(plain.as_ref().err(), cached.as_ref().err());
        prop_assert!(plain.is_err(), "accepted {:?}", String::from_utf8_lossy(&raw));
        if also_valid {
            prop_assert_eq!(plain.err(), Some(AuthError::Ambiguous));
        } else if raw.len() > 8 * 1024 + "Bearer ".len() {
            prop_assert_eq!(plain.err(), Some(AuthError::TooLarge));
        }
    }
}

// =====================================================================
// 3. Metadata and framing: `grpc-timeout`, `MessageCounter`
// =====================================================================

/// The gRPC spec's grammar: `TimeoutValue TimeoutUnit`, a value of at most
/// 8 ASCII digits (0 accepted, as every gRPC implementation does) and one
/// of `H M S m u n`.
fn timeout_oracle(value: &str) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 60 * 60),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// ASCII `grpc-timeout` candidates: mostly near the grammar, some anything.
fn ascii_timeout() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,10}[HMSmunhsx ]",
        "[+-]?[0-9 ]{0,9}[HMSmun]",
        "[0-9]{1,8}[HMSmun]",
        "[ -~]{0,12}",
    ]
}

/// A gRPC message stream: 5-byte prefixes (flag, big-endian length) and bodies.
fn framed(messages: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (compressed, body) in messages {
        out.push(u8::from(*compressed));
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

proptest! {
    #![proptest_config(config(256))]

    /// Never panics on ASCII and agrees with the spec's grammar (header
    /// values reach the parser through `HeaderValue::to_str`, so ASCII).
    #[test]
    fn grpc_timeout_follows_the_spec_grammar(value in ascii_timeout()) {
        prop_assert_eq!(parse_grpc_timeout(&value), timeout_oracle(&value), "{:?}", value);
    }

    /// Any UTF-8 string: `parse_grpc_timeout` is a public `&str` API.
    /// (Found a panic on strings ending in a multi-byte character; fixed.)
    #[test]
    fn grpc_timeout_never_panics_on_any_string(value in any::<String>()) {
        prop_assert_eq!(parse_grpc_timeout(&value), timeout_oracle(&value), "{:?}", value);
    }

    /// Feeding a valid stream in arbitrary chunks counts every message once,
    /// wherever the chunk boundaries fall (inside a prefix, a body, between).
    #[test]
    fn message_counter_counts_messages_over_any_chunking(
        messages in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)),
            0..24,
        ),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let bytes = framed(&messages);
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.dedup();
        let mut counter = MessageCounter::default();
        let mut reported = 0u64;
        for w in at.windows(2) {
            reported += counter.feed(&bytes[w[0]..w[1]]);
        }
        // Empty chunks count nothing.
        reported += counter.feed(&[]);
        prop_assert_eq!(counter.messages, messages.len() as u64);
        prop_assert_eq!(reported, messages.len() as u64);
    }

    /// Arbitrary bytes in arbitrary chunks: never a panic, and never more
    /// messages than 5-byte prefixes fit.
    #[test]
    fn message_counter_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let mut counter = MessageCounter::default();
        for w in at.windows(2) {
            counter.feed(&bytes[w[0]..w[1]]);
        }
        prop_assert!(counter.messages <= (bytes.len() / 5) as u64);
    }
}

// =====================================================================
// Hand-written seeds: the corpus' named cases.
// =====================================================================

fn sample_request() -> pb::RegisterOrderRequest {
    pb::RegisterOrderRequest {
        items: vec![pb::LineItem {
            sku: "APPLE-1".into(),
            quantity: 3,
            unit_price_cents: 250,
        }],
        address: Some(pb::Address {
            street: "Main Street".into(),
            number: 12,
            city: "Utrecht".into(),
            postal_code: "3511 AB".into(),
        }),
        request_id: String::new(),
    }
}

#[test]
fn seed_conversion_edge_cases() {
    let mut cases = Vec::new();
    let mut r = sample_request();
    r.items = vec![r.items[0].clone(); 100];
    r.items[0].quantity = 1000;
    r.items[0].unit_price_cents = 10_000_000;
    cases.push(r);
    let mut r = sample_request();
    r.items[0].quantity = i32::MIN;
    r.items[0].unit_price_cents = i64::MAX;
    r.address.as_mut().unwrap().number = i64::MIN;
    cases.push(r);
    let mut r = sample_request();
    r.address.as_mut().unwrap().street = "ü".repeat(200);
    r.address.as_mut().unwrap().city = "\u{0}\u{7f}\n".into();
    r.address.as_mut().unwrap().postal_code = "٣²ß-ü 9".into();
    cases.push(r);
    let mut r = sample_request();
    r.address.as_mut().unwrap().street = " \t\u{a0}".into();
    r.request_id = "{0190F1C4-6A7A-7CC1-9F4B-1B2C3D4E5F60}".into();
    cases.push(r);
    let mut r = sample_request();
    r.items = vec![r.items[0].clone(); 149];
    r.items[120].sku = "bad".into();
    r.request_id = "urn:uuid:0190f1c4-6a7a-7cc1-9f4b-1b2c3d4e5f60".into();
    cases.push(r);
    cases.push(pb::RegisterOrderRequest::default());
    for r in cases {
        check_conversion(r.clone()).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    }
}

#[test]
fn seed_tokens() {
    let t = tokens();
    let (head, rest) = t.valid.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    for token in [
        String::new(),
        "..".into(),
        "a.b.c.d".into(),
        format!("{head}.{payload}"),
        format!("{head}.{payload}.{sig}="),
        format!("{head}.{payload}.{sig}A"),
        format!("{head}=.{payload}.{sig}"),
        format!(" {}", t.valid),
        format!("{}\u{0}", t.valid),
        format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
        format!("{}.{payload}.{sig}", b64(br#"{"alg":"HS256","kid":"x"}"#)),
        format!("{}.{payload}.{sig}", b64(b"[]")),
        format!(
            "{}.{payload}.{sig}",
            b64(b"{\"alg\":\"ES256\",\"alg\":\"none\"}")
        ),
        format!("{head}.{}.{sig}", b64(b"\xff\xfe")),
    ] {
        assert!(verify_both(&token).unwrap().is_err(), "accepted {token:?}");
    }
    // Fields of the wrong type under a real signature.
    let header = json!({"alg": "ES256", "kid": t.kid});
    for payload in [
        &b"null"[..],
        b"[]",
        b"{\"sub\":\"a\",\"sub\":\"b\"}",
        b"{",
        b"\xff",
    ] {
        assert!(verify_both(&signed(&header, payload)).unwrap().is_err());
    }
    // Header forms.
    for (value, want) in [
        ("Bearer", AuthError::Malformed),
        ("Bearer ", AuthError::Malformed),
        ("Basic YWxpY2U6c2VjcmV0", AuthError::MissingToken),
        ("bearer x", AuthError::Malformed),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        assert_eq!(
            t.plain.authenticate(&headers).err(),
            Some(want),
            "{value:?}"
        );
    }
    let mut headers = http::HeaderMap::new();
    assert_eq!(
        t.plain.authenticate(&headers).err(),
        Some(AuthError::MissingToken)
    );
    headers.insert(
        http::header::AUTHORIZATION,
        format!("bearer {}", t.valid).parse().unwrap(),
    );
    assert!(
        t.plain.authenticate(&headers).is_ok(),
        "the scheme is case-insensitive"
    );
}

#[test]
fn seed_grpc_timeouts() {
    for v in [
        "",
        "S",
        "0S",
        "1S",
        "00000001n",
        "99999999H",
        "100000000S",
        "1s",
        "1 S",
        " 1S",
        "+1S",
        "-1S",
        "1.5S",
        "١S",
        "1SS",
    ] {
        assert_eq!(parse_grpc_timeout(v), timeout_oracle(v), "{v:?}");
    }
}

/// Found by `grpc_timeout_never_panics_on_any_string`: a multi-byte last
/// character is no unit, and splitting it off must not panic.
#[test]
fn seed_grpc_timeout_with_a_multibyte_unit() {
    assert_eq!(parse_grpc_timeout("1é"), None);
}

/// Found by the claims property: jsonwebtoken accepts an `iss` array holding
/// the issuer; RFC 7519 makes `iss` one string, and so does the service.
#[test]
fn seed_an_iss_array_is_refused() {
    let now = unix_now();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": tokens().kid});
    let claims =
        json!({"sub": "alice", "iss": ["evil", ISSUER], "aud": AUDIENCE, "exp": now + 600});
    let token = signed(&header, claims.to_string().as_bytes());
    assert_eq!(
        verify_both(&token).unwrap().err(),
        Some(AuthError::WrongIssuer)
    );
}
