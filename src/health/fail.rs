//! [`FailKind`]: why a query to an upstream did not give a good answer, in the
//! words the tiers, the circuit breaker, the metrics and the Extended DNS Error share.

/// Why a query to an upstream did not give a good answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailKind {
    /// No answer within the driver's per-query timeout.
    Timeout,
    /// RCODE SERVFAIL.
    ServFail,
    /// RCODE REFUSED.
    Refused,
    /// RCODE FORMERR.
    FormErr,
    /// RCODE NOTIMP.
    NotImp,
    /// Any other RCODE that is neither NOERROR nor NXDOMAIN.
    OtherRcode,
    /// The reply could not be parsed or its question did not match.
    Malformed,
    /// The query could not be sent or the connection failed.
    Network,
    /// An encrypted upstream's certificate did not verify (unknown issuer, wrong
    /// name, expired...): the query was never sent, and is never sent in the clear
    /// instead.
    TlsCertificate,
    /// tierdns itself had no room for the query (a full pending table or too many
    /// upstream TCP connections): says nothing about the upstream's health.
    Overload,
}

impl FailKind {
    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ServFail => "servfail",
            Self::Refused => "refused",
            Self::FormErr => "formerr",
            Self::NotImp => "notimp",
            Self::OtherRcode => "other_rcode",
            Self::Malformed => "malformed",
            Self::Network => "network",
            Self::Overload => "overload",
            Self::TlsCertificate => "tls_certificate",
        }
    }

    /// Whether this failure says the upstream itself is unwell, so that it counts
    /// towards its circuit breaker. SERVFAIL and odd RCODEs are often about the name
    /// asked (a broken zone makes every upstream SERVFAIL): they only worsen the
    /// upstream's score, or a flood for one broken name would open every circuit.
    pub fn trips_circuit(self) -> bool {
        match self {
            Self::Timeout
            | Self::Refused
            | Self::Malformed
            | Self::Network
            | Self::TlsCertificate => true,
            Self::ServFail | Self::FormErr | Self::NotImp | Self::OtherRcode | Self::Overload => {
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_kind_labels_are_distinct() {
        let all = [
            FailKind::Timeout,
            FailKind::ServFail,
            FailKind::Refused,
            FailKind::FormErr,
            FailKind::NotImp,
            FailKind::OtherRcode,
            FailKind::Malformed,
            FailKind::Network,
            FailKind::Overload,
            FailKind::TlsCertificate,
        ];
        let mut labels: Vec<_> = all.iter().map(|k| k.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
        assert!(FailKind::Timeout.trips_circuit());
        assert!(!FailKind::ServFail.trips_circuit());
        assert!(!FailKind::Overload.trips_circuit());
        assert!(
            FailKind::TlsCertificate.trips_circuit(),
            "an upstream whose certificate does not verify is unusable"
        );
    }
}
