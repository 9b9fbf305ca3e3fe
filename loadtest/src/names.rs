//! What the generator asks: names and types.
//!
//! Three sources, as in the CLI: a dnsperf data file (`name type` per line, cycled
//! in order as dnsperf does), a Zipf mix over `N` generated names (`n<rank>.<zone>`,
//! rank 0 the most popular), and never-seen names (`u<counter>.<tag>.<zone>`, each
//! asked once). The generated sources take their types from a weighted mix
//! (`A:80,AAAA:20`). Every source writes the whole query into the caller's buffer.

use crate::dns;
use rand::rngs::SmallRng;
use rand::Rng;
use std::fmt::Write as _;

/// One line of a dnsperf data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLine {
    /// The name as written.
    pub name: String,
    /// Its query type.
    pub qtype: u16,
}

/// Parses dnsperf's data format: one `name [type]` per line (type A when absent);
/// blank lines and lines starting with `;` are skipped. Errors name the line.
pub fn parse_data_file(text: &str) -> Result<Vec<DataLine>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap_or_default();
        let qtype = match parts.next() {
            None => dns::TYPE_A,
            Some(t) => dns::qtype_from_name(t)
                .ok_or_else(|| format!("line {}: unknown query type {t:?}", i + 1))?,
        };
        if parts.next().is_some() {
            return Err(format!(
                "line {}: expected `name type`, got {line:?}",
                i + 1
            ));
        }
        let mut probe = Vec::new();
        dns::write_name(&mut probe, name)
            .map_err(|_| format!("line {}: not a valid name: {name:?}", i + 1))?;
        out.push(DataLine {
            name: name.to_string(),
            qtype,
        });
    }
    if out.is_empty() {
        return Err("the data file has no query".into());
    }
    Ok(out)
}

/// A weighted mix of query types.
#[derive(Debug, Clone, PartialEq)]
pub struct QtypeMix {
    /// (type, cumulative weight) in the order given.
    cumulative: Vec<(u16, u32)>,
}

impl QtypeMix {
    /// Parses `A:80,AAAA:20` (a bare `A` weighs 1).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut cumulative = Vec::new();
        let mut total = 0u32;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => (
                    n,
                    w.parse::<u32>()
                        .map_err(|_| format!("qtype mix: bad weight in {part:?}"))?,
                ),
                None => (part, 1),
            };
            let qtype = dns::qtype_from_name(name)
                .ok_or_else(|| format!("qtype mix: unknown type {name:?}"))?;
            if weight == 0 {
                continue;
            }
            total = total
                .checked_add(weight)
                .ok_or("qtype mix: weights too large")?;
            cumulative.push((qtype, total));
        }
        if cumulative.is_empty() {
            return Err(format!("qtype mix {spec:?} has no type with a weight"));
        }
        Ok(Self { cumulative })
    }

    /// A type drawn with the mix's weights.
    pub fn pick(&self, rng: &mut SmallRng) -> u16 {
        let total = self.cumulative.last().map_or(1, |c| c.1);
        let x = rng.random_range(0..total);
        self.cumulative
            .iter()
            .find(|(_, c)| x < *c)
            .map_or(dns::TYPE_A, |(t, _)| *t)
    }

    /// The share of `qtype` in the mix, 0 to 1.
    pub fn share(&self, qtype: u16) -> f64 {
        let total = f64::from(self.cumulative.last().map_or(1, |c| c.1));
        let mut prev = 0;
        let mut sum = 0;
        for &(t, c) in &self.cumulative {
            if t == qtype {
                sum += c - prev;
            }
            prev = c;
        }
        f64::from(sum) / total
    }
}

/// Zipf's law over ranks `0..n`: P(rank k) proportional to 1/(k+1)^s.
/// Sampling inverts a precomputed CDF (8 bytes per name, a binary search per draw).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks with exponent `s` (`s = 0` is uniform).
    pub fn new(n: usize, s: f64) -> Result<Self, String> {
        if n == 0 {
            return Err("zipf: at least one name".into());
        }
        if !(0.0..=10.0).contains(&s) {
            return Err(format!("zipf: exponent {s} outside 0..10"));
        }
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += ((k + 1) as f64).powf(-s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Ok(Self { cdf })
    }

    /// The probability of rank `k`.
    pub fn probability(&self, k: usize) -> f64 {
        let prev = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - prev
    }

    /// Share of draws that fall on the `k` most popular ranks.
    pub fn head_share(&self, k: usize) -> f64 {
        if k == 0 {
            0.0
        } else {
            self.cdf[(k - 1).min(self.cdf.len() - 1)]
        }
    }

    /// A rank drawn from the distribution.
    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        let u: f64 = rng.random();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// Where the generator's queries come from.
#[derive(Debug, Clone)]
pub enum NameSource {
    /// A dnsperf data file, each query pre-encoded, cycled in order.
    File {
        /// Wire form of each query with ID 0, and its type.
        queries: Vec<(Vec<u8>, u16)>,
        /// Next line.
        next: usize,
    },
    /// Zipf over `n<rank>.<zone>`.
    Zipf {
        /// The rank distribution.
        zipf: Zipf,
        /// Types.
        mix: QtypeMix,
        /// Zone appended to every name.
        zone: String,
    },
    /// `u<counter>.<tag>.<zone>`, never asked twice in one run.
    Unique {
        /// Types.
        mix: QtypeMix,
        /// Distinguishes runs against one cache.
        tag: String,
        /// Zone appended.
        zone: String,
        /// Next counter.
        next: u64,
    },
}

/// EDNS UDP size the generator advertises.
pub const EDNS_SIZE: u16 = 1232;

impl NameSource {
    /// A file source from parsed lines.
    pub fn from_lines(lines: &[DataLine]) -> Result<Self, String> {
        let mut queries = Vec::with_capacity(lines.len());
        for l in lines {
            let mut q = Vec::new();
            dns::build_query(&mut q, 0, &l.name, l.qtype, EDNS_SIZE)
                .map_err(|e| format!("{}: {e:?}", l.name))?;
            queries.push((q, l.qtype));
        }
        Ok(Self::File { queries, next: 0 })
    }

    /// Writes the next query with `id` into `out` (scratch is a reusable name
    /// buffer); returns its type.
    pub fn next_query(
        &mut self,
        rng: &mut SmallRng,
        id: u16,
        out: &mut Vec<u8>,
        scratch: &mut String,
    ) -> u16 {
        match self {
            Self::File { queries, next } => {
                let (q, qtype) = &queries[*next];
                *next = (*next + 1) % queries.len();
                out.clear();
                out.extend_from_slice(q);
                out[0..2].copy_from_slice(&id.to_be_bytes());
                *qtype
            }
            Self::Zipf { zipf, mix, zone } => {
                let rank = zipf.sample(rng);
                scratch.clear();
                let _ = write!(scratch, "n{rank}.{zone}");
                let qtype = mix.pick(rng);
                dns::build_query(out, id, scratch, qtype, EDNS_SIZE)
                    .expect("generated names are valid");
                qtype
            }
            Self::Unique {
                mix,
                tag,
                zone,
                next,
            } => {
                scratch.clear();
                let _ = write!(scratch, "u{next}.{tag}.{zone}");
                *next += 1;
                let qtype = mix.pick(rng);
                dns::build_query(out, id, scratch, qtype, EDNS_SIZE)
                    .expect("generated names are valid");
                qtype
            }
        }
    }
}

/// The name of rank `k` of a Zipf source.
pub fn zipf_name(k: usize, zone: &str) -> String {
    format!("n{k}.{zone}")
}

/// The `i`-th never-seen name of a unique source.
pub fn unique_name(i: u64, tag: &str, zone: &str) -> String {
    format!("u{i}.{tag}.{zone}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn data_file_lines_comments_and_default_type() {
        let text = "; dnsperf data\nwww.example.com A\n\n  mail.example.com   AAAA  \nbare.example\nx.test TYPE65\n";
        let lines = parse_data_file(text).unwrap();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].name, "www.example.com");
        assert_eq!(lines[0].qtype, dns::TYPE_A);
        assert_eq!(lines[1].qtype, dns::TYPE_AAAA);
        assert_eq!(lines[2].qtype, dns::TYPE_A, "type A when absent");
        assert_eq!(lines[3].qtype, 65);
    }

    #[test]
    fn data_file_errors_name_the_line() {
        let e = parse_data_file("a.test A\nb.test BOGUS\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_data_file("a.test A extra\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(parse_data_file("; only a comment\n").is_err());
        let e = parse_data_file("a..b A\n").unwrap_err();
        assert!(e.contains("not a valid name"), "{e}");
    }

    #[test]
    fn file_source_cycles_in_order_and_sets_the_id() {
        let lines = parse_data_file("a.test A\nb.test AAAA\n").unwrap();
        let mut src = NameSource::from_lines(&lines).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let (mut out, mut s) = (Vec::new(), String::new());
        let mut name = String::new();
        let mut seen = Vec::new();
        for id in 0..4u16 {
            let t = src.next_query(&mut rng, id + 100, &mut out, &mut s);
            assert_eq!(dns::message_id(&out), Some(id + 100));
            dns::read_name(&out, dns::HEADER_LEN, &mut name).unwrap();
            seen.push((name.clone(), t));
        }
        assert_eq!(seen[0], ("a.test.".into(), dns::TYPE_A));
        assert_eq!(seen[1], ("b.test.".into(), dns::TYPE_AAAA));
        assert_eq!(seen[2], seen[0]);
    }

    #[test]
    fn qtype_mix_parses_and_follows_its_weights() {
        let mix = QtypeMix::parse("A:80,AAAA:20").unwrap();
        assert!((mix.share(dns::TYPE_A) - 0.8).abs() < 1e-9);
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 100_000;
        let a = (0..n).filter(|_| mix.pick(&mut rng) == dns::TYPE_A).count();
        let share = a as f64 / n as f64;
        assert!((share - 0.8).abs() < 0.01, "A share {share}");
        assert_eq!(QtypeMix::parse("AAAA").unwrap().share(dns::TYPE_AAAA), 1.0);
        assert!(QtypeMix::parse("A:x").is_err());
        assert!(QtypeMix::parse("FOO:1").is_err());
        assert!(QtypeMix::parse("A:0").is_err());
    }

    #[test]
    fn zipf_matches_its_law() {
        let z = Zipf::new(1000, 1.0).unwrap();
        // P(0)/P(1) = 2 for s = 1
        assert!((z.probability(0) / z.probability(1) - 2.0).abs() < 1e-9);
        let mut rng = SmallRng::seed_from_u64(42);
        let n = 200_000;
        let mut counts = vec![0usize; 1000];
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        for k in [0, 1, 9] {
            let expected = z.probability(k) * n as f64;
            let got = counts[k] as f64;
            assert!(
                (got - expected).abs() < 5.0 * expected.sqrt() + 1.0,
                "rank {k}: {got} vs {expected}"
            );
        }
        assert!((z.head_share(1000) - 1.0).abs() < 1e-9);
        let uniform = Zipf::new(4, 0.0).unwrap();
        assert!((uniform.probability(3) - 0.25).abs() < 1e-12);
        assert!(Zipf::new(0, 1.0).is_err());
    }

    #[test]
    fn unique_source_never_repeats() {
        let mut src = NameSource::Unique {
            mix: QtypeMix::parse("A").unwrap(),
            tag: "r1".into(),
            zone: "load.test".into(),
            next: 0,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let (mut out, mut s, mut name) = (Vec::new(), String::new(), String::new());
        let mut seen = std::collections::HashSet::new();
        for id in 0..100 {
            src.next_query(&mut rng, id, &mut out, &mut s);
            dns::read_name(&out, dns::HEADER_LEN, &mut name).unwrap();
            assert!(seen.insert(name.clone()), "{name} repeated");
        }
        assert!(seen.contains(&format!("{}.", unique_name(5, "r1", "load.test"))));
    }
}
