//! Fetching a JWKS over HTTPS (`auth.jwks_url`).
//!
//! reqwest does the HTTP; the TLS is a rustls client config of ours (ring,
//! like the rest of the service) trusting either `auth.jwks_ca` alone (a
//! private identity provider) or the Mozilla roots of `webpki-roots` (no
//! dependence on the image's CA bundle). Plain `http://` is refused, also on
//! redirects, the response must be 2xx, arrive within the timeout, and stay
//! under the size limit, so a hostile or broken key server can neither make
//! us trust its keys over plaintext nor exhaust memory.

use super::key_error::KeyError;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A JWKS URL with the client that fetches it.
#[derive(Clone)]
pub struct JwksUrl {
    url: reqwest::Url,
    client: reqwest::Client,
    max_bytes: usize,
}

impl JwksUrl {
    /// `ca`: PEM certificates to trust instead of the public roots.
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| fail(e.to_string()))?;
        if parsed.scheme() != "https" {
            return Err(fail("only https:// is allowed".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let ca_error = |reason: String| KeyError::Ca {
                    path: path.to_owned(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                let mut found = 0;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| ca_error(e.to_string()))?;
                    roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
                    found += 1;
                }
                if found == 0 {
                    return Err(ca_error("no PEM certificate in it".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            // The documented way to give reqwest's `rustls-no-provider` build
            // a config; `build()` fails (so does our start) if it is not taken.
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::limited(3))
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("grpc-platform/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            url: parsed,
            client,
            max_bytes,
        })
    }

    /// The URL without query or fragment, fit for logs.
    pub fn display(&self) -> String {
        let mut shown = self.url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        shown.to_string()
    }

    /// The JWKS document's bytes.
    pub(super) async fn fetch(&self) -> Result<Vec<u8>, KeyError> {
        let fail = |reason: String| KeyError::Fetch {
            url: self.display(),
            reason,
        };
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fail(error_chain(&e.without_url())))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP status {}", response.status())));
        }
        let too_large = || fail(format!("larger than {} bytes", self.max_bytes));
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(error_chain(&e.without_url())))?
        {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// reqwest's top-level error says little ("error sending request"); the
/// cause (certificate unknown, connection refused, timed out) is below it.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
