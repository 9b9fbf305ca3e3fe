//! The one step of a start that reads files, before any socket: the listeners'
//! certificates and keys, and every encrypted upstream's trusted roots (its
//! `ca_file`, or the system's store) with the TLS client config built on them.
//! [`Config::parse`] reads none of them; `tierdns --check` runs this step as a start
//! would, and a start hands its result to every shard, so each file is read once
//! and all shards trust the same roots. A reload runs its upstream half
//! ([`CheckedUpstreams::check`]) and rereads the certificates on its own terms (a
//! bad file keeps the running certificate).

use super::upstreams::CheckedUpstreams;
use super::StartError;
use crate::certs::ListenerTls;
use crate::config::Config;
use std::sync::Arc;

/// What a start read from disk, checked, for the shards to share.
pub struct Preflight {
    pub(super) listener_tls: ListenerTls,
    pub(super) upstreams: CheckedUpstreams,
}

impl Preflight {
    /// Reads the files `config` names; the error names the config key at fault
    /// (`tls.cert_file`, `upstream[2].ca_file`, ...).
    pub fn run(config: Config) -> Result<Self, StartError> {
        let listener_tls = ListenerTls::load(&config).map_err(StartError::Tls)?;
        let upstreams = CheckedUpstreams::check(Arc::new(config)).map_err(StartError::Upstream)?;
        Ok(Self {
            listener_tls,
            upstreams,
        })
    }

    /// The config it was run on.
    pub fn config(&self) -> &Config {
        &self.upstreams.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight(text: &str) -> Result<Preflight, String> {
        let config = Config::parse(text, "t.toml").expect("parses: the files are not read");
        Preflight::run(config).map_err(|e| e.to_string())
    }

    #[test]
    fn the_files_a_config_names_are_read_here_and_the_error_names_the_key() {
        let e = preflight(
            "[[upstream]]\naddress = \"tls://127.0.0.1\"\nca_file = \"/nonexistent/ca.pem\"\n",
        )
        .err()
        .expect("no such file");
        assert!(
            e.contains("upstream[0].ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = preflight(
            "[[upstream]]\naddress = \"127.0.0.1:53\"\n\
             [tls]\nlisten = [\"127.0.0.1:853\"]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
        )
        .err()
        .expect("no certificate");
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
        let ok = preflight("[[upstream]]\naddress = \"127.0.0.1:53\"\n").expect("plain");
        assert_eq!(ok.config().upstreams.len(), 1);
    }
}
