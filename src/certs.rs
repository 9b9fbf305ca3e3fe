//! The server certificates of the encrypted listeners (`[tls]`, `[https]`): read
//! from PEM files at start, reread on reload, and handed to every handshake.
//!
//! A [`ServerCert`] is shared by every shard and is the rustls certificate resolver
//! of its listeners' [`rustls::ServerConfig`]: each handshake takes the
//! [`CertifiedKey`] in force (an `Arc` clone under a read lock). [`ServerCert::reload`]
//! reads the files again and swaps the key in whole; a file that cannot be read,
//! holds no certificate, or whose key does not match the certificate is an error
//! naming the config key, and the running certificate stays. Connections already
//! open keep the certificate they were made with.
//!
//! TLS is rustls with the ring provider, given explicitly (no process-wide
//! default): TLS 1.3 and 1.2 with rustls' safe defaults, no client certificates.
//! Each file is read whole, at most [`MAX_FILE`] bytes.

use crate::config::{CertFiles, Config};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::io::Read;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
pub const MAX_FILE: u64 = 1 << 20;

/// Why a certificate could not be (re)loaded; names the config key of the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read.
    #[error("{key}: cannot read {path}: {source}")]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what the key needs.
    #[error("{key}: {path}: {reason}")]
    Content {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The ring provider every encrypted listener uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_bounded((path, key): (&str, &'static str)) -> Result<Vec<u8>, CertError> {
    let read_err = |source| CertError::Read {
        key,
        path: path.to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(CertError::Content {
            key,
            path: path.to_string(),
            reason: format!("larger than {MAX_FILE} bytes"),
        });
    }
    Ok(bytes)
}

/// Reads a certificate chain and its key, and checks that they belong together.
pub fn load(files: CertFiles<'_>, provider: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let content = |(path, key): (&str, &'static str), reason: String| CertError::Content {
        key,
        path: path.to_string(),
        reason,
    };
    let pem = read_bounded(files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(content(
            files.cert,
            "no CERTIFICATE block in the file".into(),
        ));
    }
    let pem = read_bounded(files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| content(files.key, format!("no PEM private key: {e}")))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        content(
            files.key,
            format!("not a usable key for the certificate: {e}"),
        )
    })
}

/// The certificate files the configured listeners need (`[tls]` with `tls.listen`,
/// `[https]`'s own or `[tls]`'s with `https.listen`), each with its key.
pub fn needed(config: &Config) -> Vec<CertFiles<'_>> {
    let (tls, https) = (&config.tls, &config.https);
    let mut files = Vec::new();
    if !tls.listen.is_empty() {
        files.push(CertFiles {
            cert: (&tls.cert_file, "tls.cert_file"),
            key: (&tls.key_file, "tls.key_file"),
        });
    }
    if !https.listen.is_empty() {
        files.push(https.cert_files(tls));
    }
    files
}

/// The certificate in force for a set of listeners, swapped whole by a reload.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCert {
    /// Loads the files; an error names the key of the file at fault.
    pub fn load(files: CertFiles<'_>) -> Result<Self, CertError> {
        let provider = provider();
        let key = load(files, &provider)?;
        Ok(Self {
            current: RwLock::new(Arc::new(key)),
            provider,
        })
    }

    /// Reads the files again: the new certificate serves every handshake from now
    /// on. On error the running one stays.
    pub fn reload(&self, files: CertFiles<'_>) -> Result<(), CertError> {
        let key = load(files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// The certificate chain in force (leaf first), DER.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// A rustls server config on this certificate offering `alpn` (in order of
    /// preference): TLS 1.3 and 1.2, no client authentication, no 0-RTT.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// ALPN of DNS over TLS (RFC 7858's registration in the ALPN registry).
const ALPN_DOT: &[u8] = b"dot";

/// One kind of encrypted listener's TLS: its certificate and server config.
#[derive(Debug)]
pub(crate) struct TlsSetup {
    cert: Arc<ServerCert>,
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) handshake_timeout: Duration,
}

/// The encrypted listeners' TLS state (DoT, DoH), shared by every shard; a kind
/// without listen addresses has none.
#[derive(Debug, Default)]
pub(crate) struct ListenerTls {
    pub(crate) dot: Option<TlsSetup>,
    pub(crate) doh: Option<TlsSetup>,
}

impl ListenerTls {
    /// Loads the certificates the configured listeners need; the error names the
    /// key of the file at fault. `[https]` without files of its own loads `[tls]`'s
    /// files into a certificate of its own, so each section reloads on its own.
    pub(crate) fn load(config: &Config) -> Result<Self, String> {
        let listener = |files, alpn: &[&[u8]], handshake_timeout| {
            let cert = Arc::new(ServerCert::load(files).map_err(|e| e.to_string())?);
            let config = cert.server_config(alpn).map_err(|e| e.to_string())?;
            Ok::<_, String>(TlsSetup {
                cert,
                config,
                handshake_timeout,
            })
        };
        let tls = &config.tls;
        let https = &config.https;
        Ok(Self {
            dot: if tls.listen.is_empty() {
                None
            } else {
                let files = CertFiles {
                    cert: (&tls.cert_file, "tls.cert_file"),
                    key: (&tls.key_file, "tls.key_file"),
                };
                Some(listener(files, &[ALPN_DOT], tls.handshake_timeout)?)
            },
            doh: if https.listen.is_empty() {
                None
            } else {
                Some(listener(
                    https.cert_files(tls),
                    &[b"h2", b"http/1.1"],
                    https.handshake_timeout,
                )?)
            },
        })
    }

    /// Rereads the certificate files `config` names; a file that fails keeps the
    /// running certificate. Returns one message per failure (naming the key).
    pub(crate) fn reload(&self, config: &Config) -> Vec<String> {
        let tls = &config.tls;
        let mut failed = Vec::new();
        if let Some(dot) = &self.dot {
            let files = CertFiles {
                cert: (&tls.cert_file, "tls.cert_file"),
                key: (&tls.key_file, "tls.key_file"),
            };
            if let Err(e) = dot.cert.reload(files) {
                failed.push(format!("keeping the running DoT certificate: {e}"));
            }
        }
        if let Some(doh) = &self.doh {
            if let Err(e) = doh.cert.reload(config.https.cert_files(tls)) {
                failed.push(format!("keeping the running DoH certificate: {e}"));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tierdns-certs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write_pair(d: &Dir, prefix: &str, host: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = d.0.join(format!("{prefix}-cert.pem"));
        let k = d.0.join(format!("{prefix}-key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn files<'a>(c: &'a str, k: &'a str) -> CertFiles<'a> {
        CertFiles {
            cert: (c, "tls.cert_file"),
            key: (k, "tls.key_file"),
        }
    }

    #[test]
    fn loads_a_pair_and_names_the_key_of_a_bad_file() {
        let d = dir("load");
        let (c, k) = write_pair(&d, "a", "a.test");
        let cert = ServerCert::load(files(&c, &k)).unwrap();
        assert_eq!(cert.chain().len(), 1);

        let missing = d.0.join("missing.pem").display().to_string();
        let e = ServerCert::load(files(&missing, &k))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("tls.cert_file: cannot read"), "{e}");
        // A key file given as the certificate: no certificate in it.
        let e = ServerCert::load(files(&k, &k)).unwrap_err().to_string();
        assert!(
            e.contains("tls.cert_file") && e.contains("no CERTIFICATE"),
            "{e}"
        );
        let e = ServerCert::load(files(&c, &c)).unwrap_err().to_string();
        assert!(e.contains("tls.key_file"), "{e}");
        // Another pair's key: does not match the certificate.
        let (_, k2) = write_pair(&d, "b", "b.test");
        let e = ServerCert::load(files(&c, &k2)).unwrap_err().to_string();
        assert!(
            e.contains("tls.key_file") && e.contains("not a usable key"),
            "{e}"
        );
        let big = d.0.join("big.pem");
        std::fs::write(&big, vec![b'x'; MAX_FILE as usize + 1]).unwrap();
        let e = ServerCert::load(files(&big.display().to_string(), &k))
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
        let d = dir("reload");
        let (c, k) = write_pair(&d, "a", "a.test");
        let cert = ServerCert::load(files(&c, &k)).unwrap();
        let first = cert.chain();
        let (c2, k2) = write_pair(&d, "b", "b.test");
        cert.reload(files(&c2, &k2)).unwrap();
        let second = cert.chain();
        assert_ne!(first, second);
        assert!(cert.reload(files(&c2, &k)).is_err());
        assert_eq!(cert.chain(), second, "the running certificate stays");
    }
}
