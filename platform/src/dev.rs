//! Development certificates and tokens, so `cargo run` serves TLS and JWT on
//! a fresh checkout with no set-up. Never used in production (the
//! configuration refuses `dev.generate_certs` there).
//!
//! `certs/dev/` holds: `ca.pem`/`ca.key` (a development CA), `server.pem`/
//! `server.key` (for `localhost`, `127.0.0.1` and `::1`, signed by the CA),
//! `signing.key` (ES256, PKCS#8) and `jwks.json` (its public half).

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const SIGNING_KEY: &str = "signing.key";
pub const JWKS: &str = "jwks.json";

/// The files of a development set.
pub struct DevCerts {
    pub dir: PathBuf,
    /// Names the certificates' subjects (`{name} development CA`).
    pub name: String,
}

impl DevCerts {
    /// The set in `dir`, its certificates named for the service `name`.
    pub fn new(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            name: name.into(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn complete(&self) -> bool {
        [CA_CERT, SERVER_CERT, SERVER_KEY, SIGNING_KEY, JWKS]
            .iter()
            .all(|f| self.path(f).is_file())
    }

    /// Writes a fresh set (overwriting any).
    pub fn generate(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name = name(&format!("{} development CA", self.name));
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, &ca_key);

        let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut server = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])?;
        server.distinguished_name = name(&format!("{} development server", self.name));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let signing = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;

        write(&self.path(CA_CERT), &ca_cert.pem(), false)?;
        write(&self.path(CA_KEY), &ca_key.serialize_pem(), true)?;
        write(&self.path(SERVER_CERT), &server_cert.pem(), false)?;
        write(&self.path(SERVER_KEY), &server_key.serialize_pem(), true)?;
        write(&self.path(SIGNING_KEY), &signing.serialize_pem(), true)?;
        write(&self.path(JWKS), &jwks(&signing)?, false)?;
        Ok(())
    }

    /// Signs a development token with `signing.key`.
    pub fn token(&self, claims: &DevClaims) -> anyhow::Result<String> {
        let pem = std::fs::read_to_string(self.path(SIGNING_KEY)).with_context(|| {
            format!(
                "cannot read {}; generate the development certificates first (the `dev-certs` command)",
                self.path(SIGNING_KEY).display()
            )
        })?;
        let key_pair = KeyPair::from_pem(&pem)?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid(&key_pair));
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?;
        Ok(jsonwebtoken::encode(&header, claims, &key)?)
    }
}

/// The claims of a development token.
#[derive(Debug, Serialize)]
pub struct DevClaims {
    pub sub: String,
    pub scope: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
}

impl DevClaims {
    /// Claims for `sub` with `scope` (space-separated), from `iss` to
    /// `aud`, valid from now for `ttl_secs`.
    pub fn valid_for(sub: &str, scope: &str, iss: &str, aud: &str, ttl_secs: i64) -> Self {
        let now = chrono::Utc::now().timestamp();
        Self {
            sub: sub.into(),
            scope: scope.into(),
            iss: iss.into(),
            aud: aud.into(),
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
        }
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A key id derived from the public key, so a regenerated key gets a new kid.
fn kid(key: &KeyPair) -> String {
    let digest = Sha256::digest(key.public_key_raw());
    format!("dev-{}", &URL_SAFE_NO_PAD.encode(digest)[..12])
}

fn jwks(key: &KeyPair) -> anyhow::Result<String> {
    // An uncompressed P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
    let raw = key.public_key_raw();
    anyhow::ensure!(
        raw.len() == 65 && raw[0] == 4,
        "unexpected EC public key encoding"
    );
    let jwk = serde_json::json!({
        "keys": [{
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid(key),
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        }]
    });
    Ok(serde_json::to_string_pretty(&jwk)?)
}

fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let _ = private;
    Ok(())
}
