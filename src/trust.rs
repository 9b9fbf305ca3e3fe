//! The roots encrypted upstreams trust: a `ca_file`'s certificates, or the
//! system's store. Read once per start, `--check` or reload, by the step that
//! builds the encrypted upstreams' TLS client configs for every shard
//! (`shard::upstreams::CheckedUpstreams`).
//!
//! Used by the encrypted upstream links only: it knows paths and certificates, no keys.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Largest `ca_file` read (a bundle of every public root is about 250 KB).
const MAX_CA_FILE: u64 = 4 << 20;

/// The certificates of a PEM file as a root store; the error says why in words
/// (for the config error naming `ca_file`).
pub(crate) fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.len() > MAX_CA_FILE {
        return Err(format!(
            "{shown} is larger than {} MiB: not a CA file",
            MAX_CA_FILE >> 20
        ));
    }
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{shown}: bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: a certificate that cannot be a root: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown} holds no PEM certificate"));
    }
    Ok(roots)
}

/// The system's roots (rustls-native-certs: the OS's CA bundle, `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` honoured), read once and kept for the life of the process
/// (an empty store is not kept: the next upstream opened tries again).
pub(crate) fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static SYSTEM: Mutex<Option<Arc<RootCertStore>>> = Mutex::new(None);
    let mut kept = SYSTEM.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(roots) = &*kept {
        return Ok(Arc::clone(roots));
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), |e| e.to_string());
        return Err(format!(
            "no system root certificates ({why}): install the OS's CA bundle \
             (ca-certificates) or set ca_file"
        ));
    }
    let roots = Arc::new(roots);
    *kept = Some(Arc::clone(&roots));
    Ok(roots)
}
