//! The fleet spec: each upstream's latency law and options, and their parsing
//! (the language is in the fleet module's doc).

use rand::rngs::SmallRng;
use rand::Rng;
use std::time::Duration;

/// A latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always this.
    Fixed(Duration),
    /// Uniform in [lo, hi].
    Uniform(Duration, Duration),
    /// Log-normal with this median and sigma (of the underlying normal).
    LogNormal(Duration, f64),
}

impl Latency {
    /// A draw.
    pub fn sample(&self, rng: &mut SmallRng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(lo, hi) => {
                if hi <= lo {
                    lo
                } else {
                    Duration::from_secs_f64(rng.random_range(lo.as_secs_f64()..=hi.as_secs_f64()))
                }
            }
            Self::LogNormal(median, sigma) => {
                // Box-Muller
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                Duration::from_secs_f64((median.as_secs_f64() * (sigma * z).exp()).min(60.0))
            }
        }
    }

    /// The median of the distribution.
    pub fn median(&self) -> Duration {
        match *self {
            Self::Fixed(d) | Self::LogNormal(d, _) => d,
            Self::Uniform(lo, hi) => (lo + hi) / 2,
        }
    }
}

/// One simulated upstream's behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamSpec {
    /// Delay before answering.
    pub latency: Latency,
    /// Added uniformly in [0, jitter].
    pub jitter: Duration,
    /// Share of queries never answered, 0..1.
    pub loss: f64,
    /// Share answered SERVFAIL.
    pub servfail: f64,
    /// Share answered REFUSED.
    pub refused: f64,
    /// Share of UDP answers sent with TC=1 and no records.
    pub truncate: f64,
    /// Addresses per name and type.
    pub addrs: u8,
    /// TTL of the records.
    pub ttl: u32,
}

impl UpstreamSpec {
    /// An upstream answering after `latency`, nothing else.
    pub fn fixed(latency: Duration) -> Self {
        Self {
            latency: Latency::Fixed(latency),
            jitter: Duration::ZERO,
            loss: 0.0,
            servfail: 0.0,
            refused: 0.0,
            truncate: 0.0,
            addrs: 2,
            ttl: 300,
        }
    }
}

/// Parses `20ms`, `1.5s`, `500us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("{s:?}: a duration needs a unit (us, ms, s)"));
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: not a duration"))?;
    if !(0.0..=60.0 / scale).contains(&v) {
        return Err(format!("{s:?}: out of range (0 to 60 s)"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_share(key: &str, v: &str) -> Result<f64, String> {
    let (num, scale) = match v.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (v, 1.0),
    };
    let x: f64 = num
        .parse()
        .map_err(|_| format!("{key}={v}: not a number"))?;
    let x = x * scale;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{key}={v}: must be within 0 and 100%"));
    }
    Ok(x)
}

/// Parses one upstream's spec (see the module doc).
pub fn parse_upstream(spec: &str) -> Result<UpstreamSpec, String> {
    let mut parts = spec.split('/');
    let lat = parts.next().unwrap_or_default().trim();
    let latency = if let Some(rest) = lat.strip_prefix("ln:") {
        let (m, s) = rest
            .split_once(':')
            .ok_or_else(|| format!("{lat:?}: log-normal is ln:MEDIAN:SIGMA"))?;
        let sigma: f64 = s.parse().map_err(|_| format!("{lat:?}: bad sigma"))?;
        if !(0.0..=3.0).contains(&sigma) {
            return Err(format!("{lat:?}: sigma outside 0..3"));
        }
        Latency::LogNormal(parse_duration(m)?, sigma)
    } else if let Some((lo, hi)) = lat.split_once("..") {
        let (lo, hi) = (parse_duration(lo)?, parse_duration(hi)?);
        if hi < lo {
            return Err(format!("{lat:?}: the upper bound is below the lower"));
        }
        Latency::Uniform(lo, hi)
    } else {
        Latency::Fixed(parse_duration(lat)?)
    };
    let mut u = UpstreamSpec {
        latency,
        ..UpstreamSpec::fixed(Duration::ZERO)
    };
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| format!("{opt:?}: options are key=value"))?;
        match k.trim() {
            "jitter" => u.jitter = parse_duration(v)?,
            "loss" => u.loss = parse_share(k, v)?,
            "servfail" => u.servfail = parse_share(k, v)?,
            "refused" => u.refused = parse_share(k, v)?,
            "tc" => u.truncate = parse_share(k, v)?,
            "addrs" => {
                u.addrs = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=16).contains(n))
                    .ok_or_else(|| format!("addrs={v}: 1 to 16"))?;
            }
            "ttl" => u.ttl = v.parse().map_err(|_| format!("ttl={v}: not a number"))?,
            other => {
                return Err(format!(
                    "unknown option {other:?} (jitter, loss, servfail, refused, tc, addrs, ttl)"
                ))
            }
        }
    }
    if u.loss + u.servfail + u.refused > 1.0 {
        return Err(format!("{spec:?}: loss + servfail + refused exceed 100%"));
    }
    Ok(u)
}

/// Parses a fleet spec: upstream specs separated by commas.
pub fn parse_fleet(spec: &str) -> Result<Vec<UpstreamSpec>, String> {
    let v: Vec<UpstreamSpec> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_upstream)
        .collect::<Result<_, _>>()?;
    if v.is_empty() || v.len() > 200 {
        return Err("a fleet has 1 to 200 upstreams".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn spec_parses_every_form() {
        let f = parse_fleet("20ms,40ms , 10ms..30ms,ln:20ms:0.5,1s/jitter=5ms/loss=1%/servfail=0.02/refused=1%/tc=5%/addrs=3/ttl=60").unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f[0].latency, Latency::Fixed(Duration::from_millis(20)));
        assert_eq!(
            f[2].latency,
            Latency::Uniform(Duration::from_millis(10), Duration::from_millis(30))
        );
        assert_eq!(
            f[3].latency,
            Latency::LogNormal(Duration::from_millis(20), 0.5)
        );
        let u = f[4];
        assert_eq!(u.latency.median(), Duration::from_secs(1));
        assert_eq!(u.jitter, Duration::from_millis(5));
        assert!((u.loss - 0.01).abs() < 1e-12);
        assert!((u.servfail - 0.02).abs() < 1e-12);
        assert!((u.truncate - 0.05).abs() < 1e-12);
        assert_eq!((u.addrs, u.ttl), (3, 60));
        assert_eq!(f[0].addrs, 2, "default");
    }

    #[test]
    fn spec_errors_say_what() {
        for (bad, says) in [
            ("20", "unit"),
            ("30ms..10ms", "upper bound"),
            ("20ms/loss=150%", "within 0 and 100%"),
            ("20ms/colour=red", "unknown option"),
            ("20ms/loss", "key=value"),
            ("ln:20ms", "ln:MEDIAN:SIGMA"),
            ("20ms/loss=60%/servfail=50%", "exceed"),
            ("20ms/addrs=0", "1 to 16"),
        ] {
            let e = parse_fleet(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse_fleet("").is_err());
    }

    #[test]
    fn latency_draws_follow_their_law() {
        let mut rng = SmallRng::seed_from_u64(3);
        let u = Latency::Uniform(Duration::from_millis(10), Duration::from_millis(30));
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(30));
        }
        let ln = Latency::LogNormal(Duration::from_millis(20), 0.5);
        let mut v: Vec<Duration> = (0..10_001).map(|_| ln.sample(&mut rng)).collect();
        v.sort();
        let median = v[5000].as_secs_f64() * 1000.0;
        assert!((median - 20.0).abs() < 1.0, "median {median}");
        assert!(v[9900] > Duration::from_millis(50), "a long tail");
    }
}
