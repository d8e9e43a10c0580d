//! The TLS configuration in service, and its rotation without a restart
//! (the module above says why the whole `ServerConfig` is swapped, and how
//! changes are detected).

use super::pem::{not_after, parse_certs, parse_key, read};
use anyhow::Context as _;
use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The files a TLS configuration is made of.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// The contents of [`TlsFiles`], read once so the digest and the parsed
/// configuration describe the same bytes.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> anyhow::Result<Self> {
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.cert, &self.key] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        if let Some(ca) = &self.client_ca {
            h.update(b"ca");
            h.update((ca.len() as u64).to_be_bytes());
            h.update(ca);
        }
        h.finalize().into()
    }
}

/// A validated configuration and what we report about it.
struct Built {
    config: rustls::ServerConfig,
    not_after: i64,
}

/// The rustls server configuration: TLS 1.2/1.3 (rustls' safe defaults),
/// ALPN `h2` (gRPC needs it), client certificates required when `client_ca`
/// is set. Refuses a key that does not match the certificate and an expired
/// certificate, naming the file.
fn build(files: &TlsFiles, contents: &Contents) -> anyhow::Result<Built> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in parse_certs(path, pem).context("tls.client_ca")? {
                roots.add(c).with_context(|| {
                    format!("tls.client_ca: {}: unusable CA certificate", path.display())
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .with_context(|| format!("tls.client_ca: {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let chain = parse_certs(&files.cert, &contents.cert).context("tls.cert")?;
    let key = parse_key(&files.key, &contents.key).context("tls.key")?;
    let not_after =
        not_after(&chain[0]).with_context(|| format!("tls.cert: {}", files.cert.display()))?;
    let now = chrono::Utc::now().timestamp();
    anyhow::ensure!(
        not_after > now,
        "tls.cert: {}: certificate expired at {}",
        files.cert.display(),
        chrono::DateTime::from_timestamp(not_after, 0)
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| not_after.to_string())
    );
    // rustls checks that the key's public half matches the certificate's.
    let mut config = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "tls.cert / tls.key: {} and {} do not form a usable pair",
            files.cert.display(),
            files.key.display()
        )
    })?;
    // HTTP/2 for gRPC; HTTP/1.1 for browsers and ingresses that call with
    // gRPC-Web or Connect over it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Built { config, not_after })
}

/// The rustls server configuration for these files (loaded once, no reloads).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<rustls::ServerConfig> {
    let files = TlsFiles {
        cert: cert.into(),
        key: key.into(),
        client_ca: client_ca.map(Into::into),
    };
    Ok(build(&files, &Contents::read(&files)?)?.config)
}

/// What a reload did.
#[derive(Debug)]
pub enum Reload {
    /// The files hold the same bytes as last time.
    Unchanged,
    /// A new configuration is in service for new connections.
    Reloaded,
    /// The new files were refused; the last good configuration stays.
    Refused(anyhow::Error),
}

/// The TLS configuration in service, swapped when the files change.
pub struct CertState {
    files: TlsFiles,
    config: ArcSwap<rustls::ServerConfig>,
    not_after: AtomicI64,
    /// Digest of the contents last tried (in service, or refused).
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertState")
            .field("files", &self.files)
            .field("not_after", &self.expiry_unix())
            .finish()
    }
}

impl CertState {
    /// Loads the files; at start-up a bad set is an error (nothing to fall back on).
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let contents = Contents::read(&files)?;
        let built = build(&files, &contents)?;
        Ok(Arc::new(Self {
            config: ArcSwap::from_pointee(built.config),
            not_after: AtomicI64::new(built.not_after),
            seen: Mutex::new(contents.digest()),
            files,
        }))
    }

    /// The acceptor for the next connection (the configuration in service now).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// `not_after` of the certificate in service, in Unix seconds: the value
    /// of the `{name}_tls_cert_expiry_timestamp_seconds` metric.
    pub fn expiry_unix(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Re-reads the files and swaps in a new configuration if they changed
    /// and load. Blocks (file reads); logs nothing ([`CertState::watch`] does).
    pub fn reload(&self) -> Reload {
        let contents = match Contents::read(&self.files) {
            Ok(c) => c,
            // A file missing for a moment (mid-swap) or unreadable: keep serving.
            Err(e) => return Reload::Refused(e),
        };
        let digest = contents.digest();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == digest {
                return Reload::Unchanged;
            }
            *seen = digest;
        }
        match build(&self.files, &contents) {
            Ok(built) => {
                self.config.store(Arc::new(built.config));
                self.not_after.store(built.not_after, Ordering::Relaxed);
                Reload::Reloaded
            }
            Err(e) => Reload::Refused(e),
        }
    }

    /// Reloads every `every` until `stop` resolves (or for ever).
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: just loaded
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            // File reads and PEM parsing block; keep them off the runtime's workers.
            // Logged here, not in `reload`, so the lines come from this task.
            let state = self.clone();
            match tokio::task::spawn_blocking(move || state.reload()).await {
                Ok(Reload::Unchanged) => {}
                Ok(Reload::Reloaded) => tracing::info!(
                    cert = %self.files.cert.display(),
                    not_after = self.expiry_unix(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Ok(Reload::Refused(e)) => tracing::error!(
                    error = format!("{e:#}"),
                    "TLS reload refused: the last good certificate stays in service"
                ),
                Err(_) => tracing::error!("TLS reload panicked"),
            }
        }
    }
}
