//! What a valid config may still get wrong: told at start, at every reload and by
//! `tierdns --check` (on stderr, exit code unchanged), never refused.
//!
//! - A TLS private key file (`tls.key_file`, `https.key_file`, as the listeners
//!   use them) that its group or other users may read, write or run (mode & 0o077,
//!   as ssh does for its keys): the key is the listeners' identity.
//! - An open resolver without a rate limit: `access.allow` covers every IPv4 or
//!   IPv6 address (`0.0.0.0/0`, `::/0`) while `ratelimit.qps = 0`.

use crate::config::Config;
use crate::policy::access::Network;
use std::os::unix::fs::PermissionsExt;

/// Every warning `config` calls for, one sentence each (naming the key). Reads
/// the metadata of the key files in use; a file that cannot be read is left to
/// the certificate check.
pub fn check(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for files in crate::certs::needed(config) {
        let (path, key) = files.key;
        if path.is_empty() || seen.contains(&path) {
            continue;
        }
        seen.push(path);
        if let Ok(meta) = std::fs::metadata(path) {
            if let Some(w) = key_file_mode(key, path, meta.permissions().mode()) {
                warnings.push(w);
            }
        }
    }
    warnings.extend(open_resolver(config));
    warnings
}

/// The warning for a private key file of `mode` that others than its owner may
/// use, saying who may do what.
fn key_file_mode(key: &str, path: &str, mode: u32) -> Option<String> {
    if mode & 0o077 == 0 {
        return None;
    }
    let rights = |bits: u32| {
        [(0o4, "read"), (0o2, "write"), (0o1, "execute")]
            .into_iter()
            .filter(|(bit, _)| bits & bit != 0)
            .map(|(_, what)| what)
            .collect::<Vec<_>>()
            .join("/")
    };
    let who: Vec<String> = [("group", (mode >> 3) & 0o7), ("others", mode & 0o7)]
        .into_iter()
        .filter(|(_, bits)| *bits != 0)
        .map(|(class, bits)| format!("{class} may {}", rights(bits)))
        .collect();
    Some(format!(
        "{key} {path} is not private to its owner (mode {:04o}: {}): chmod 600 it, \
         or hand it to tierdns alone (systemd LoadCredential=, a Kubernetes secret \
         with defaultMode 0400)",
        mode & 0o7777,
        who.join(", ")
    ))
}

/// The warning for an `allow` that covers every address of a family while no
/// rate limit applies.
fn open_resolver(config: &Config) -> Option<String> {
    if config.ratelimit.qps != 0 {
        return None;
    }
    let everything: Vec<&str> = config
        .access
        .allow
        .iter()
        .filter(|n| Network::parse(n).is_ok_and(|net| net.prefix == 0))
        .map(String::as_str)
        .collect();
    if everything.is_empty() {
        return None;
    }
    Some(format!(
        "access.allow has {} (every address) and ratelimit.qps = 0: an open resolver \
         without a rate limit, which anyone who reaches it can use to amplify attacks; \
         list your clients' networks, or set [ratelimit] qps",
        everything.join(" and ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_others_may_use_is_named_with_who_may_do_what() {
        assert_eq!(key_file_mode("tls.key_file", "k.pem", 0o100600), None);
        assert_eq!(key_file_mode("tls.key_file", "k.pem", 0o400), None);
        let w = key_file_mode("tls.key_file", "/etc/k.pem", 0o100644).unwrap();
        assert!(
            w.starts_with("tls.key_file /etc/k.pem is not private to its owner (mode 0644: group may read, others may read)"),
            "{w}"
        );
        let w = key_file_mode("https.key_file", "k", 0o640).unwrap();
        assert!(w.contains("(mode 0640: group may read)"), "{w}");
        let w = key_file_mode("tls.key_file", "k", 0o607).unwrap();
        assert!(
            w.contains("(mode 0607: others may read/write/execute)"),
            "{w}"
        );
        let w = key_file_mode("tls.key_file", "k", 0o620).unwrap();
        assert!(w.contains("group may write"), "{w}");
    }

    #[test]
    fn the_key_files_in_use_are_checked_once_each() {
        let dir = std::env::temp_dir().join(format!("tierdns-warn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, "not read").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut c = Config::default();
        c.tls.key_file = key.display().to_string();
        assert!(check(&c).is_empty(), "no listener uses it");
        c.tls.listen = vec!["127.0.0.1:853".parse().unwrap()];
        c.https.listen = vec!["127.0.0.1:443".parse().unwrap()];
        let w = check(&c);
        assert_eq!(w.len(), 1, "[https] shares [tls]'s file: {w:?}");
        assert!(w[0].starts_with("tls.key_file "), "{w:?}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check(&c).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_open_resolver_without_a_rate_limit_is_told() {
        let mut c = Config::default();
        assert_eq!(open_resolver(&c), None, "loopback only");
        c.access.allow = vec!["10.0.0.0/8".into(), "::/0".into()];
        let w = open_resolver(&c).unwrap();
        assert!(
            w.starts_with("access.allow has ::/0 (every address) and ratelimit.qps = 0"),
            "{w}"
        );
        c.access.allow.push("0.0.0.0/0".into());
        assert!(open_resolver(&c).unwrap().contains("::/0 and 0.0.0.0/0"));
        c.ratelimit.qps = 100;
        assert_eq!(open_resolver(&c), None, "rate limited");
        c.ratelimit.qps = 0;
        c.access.allow = vec!["0.0.0.0/1".into(), "128.0.0.0/1".into()];
        assert_eq!(open_resolver(&c), None, "only a /0 counts");
    }
}
