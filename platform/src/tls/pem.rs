//! Certificates and keys from PEM files, with errors that name the file.
//! The PEM parsing is `rustls-pki-types`' own.

use anyhow::Context as _;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

pub(super) fn parse_certs(path: &Path, pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: invalid PEM", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate found",
        path.display()
    );
    Ok(certs)
}

pub(super) fn parse_key(path: &Path, pem: &[u8]) -> anyhow::Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            anyhow::bail!("{}: no private key found", path.display())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("{}: invalid PEM", path.display()))),
    }
}

pub(super) fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    parse_certs(path, &read(path)?)
}

pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    parse_key(path, &read(path)?)
}

/// `not_after` of a DER certificate, in Unix seconds.
pub fn not_after(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("unparsable certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}
