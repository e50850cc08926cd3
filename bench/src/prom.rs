//! The daemon's /metrics: an HTTP GET on loopback (ureq) and a parser for
//! the Prometheus text format (enough of it for counters, gauges and
//! histogram buckets).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// GET `path` from `addr` (host:port); returns (status, body). Any status
/// is an answer, not an error: callers decide what a 503 means.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        // The daemon is on loopback: an HTTP_PROXY in the environment must
        // not reroute its scrapes.
        .proxy(None)
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .call()
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string()?;
    Ok((status, body))
}

pub fn scrape(addr: &str) -> anyhow::Result<Vec<Sample>> {
    let (status, body) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(parse(&body))
}

pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close]), &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, BTreeMap::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    out
}

/// Sum of every series of `name`.
pub fn sum(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

/// Cumulative buckets (upper bound, count) of histogram `name`, summed over series.
pub fn buckets(samples: &[Sample], name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket) {
        let Some(le) = s.labels.get("le").and_then(|v| match v.as_str() {
            "+Inf" => Some(f64::INFINITY),
            v => v.parse().ok(),
        }) else {
            continue;
        };
        let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += s.value;
    }
    let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after - before`, bucket by bucket.
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let prev = before.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
            (le, n - prev)
        })
        .collect()
}

/// Prometheus' histogram_quantile: linear interpolation inside the bucket.
/// None when the histogram is empty; the bucket's lower bound when the
/// quantile falls in +Inf.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
            return Some(lower + (le - lower) * frac);
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE cdc_invalidator_events_total counter
cdc_invalidator_events_total{op="u",outcome="applied"} 7
cdc_invalidator_events_total{op="tombstone",outcome="skipped"} 2
cdc_invalidator_stored_offset{topic="a.b",partition="1"} 41
h_bucket{le="0.001"} 1
h_bucket{le="0.01"} 3
h_bucket{le="+Inf"} 4
h_sum 0.5
h_count 4
"#;

    #[test]
    fn parses_counters_labels_and_buckets() {
        let s = parse(TEXT);
        assert_eq!(sum(&s, "cdc_invalidator_events_total"), 9.0);
        let off = s.iter().find(|x| x.name == "cdc_invalidator_stored_offset").unwrap();
        assert_eq!(off.labels["topic"], "a.b");
        assert_eq!(off.labels["partition"], "1");
        assert_eq!(buckets(&s, "h"), vec![(0.001, 1.0), (0.01, 3.0), (f64::INFINITY, 4.0)]);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = vec![(0.001, 1.0), (0.01, 3.0), (f64::INFINITY, 4.0)];
        assert_eq!(histogram_quantile(0.25, &b), Some(0.001));
        // rank 2 of 4: halfway through the second bucket.
        assert!((histogram_quantile(0.5, &b).unwrap() - 0.0055).abs() < 1e-12);
        assert_eq!(histogram_quantile(0.99, &b), Some(0.01));
        assert_eq!(histogram_quantile(0.5, &[(1.0, 0.0)]), None);
    }

    /// A status other than 200 is an answer, and a chunked body comes back whole.
    #[test]
    fn http_get_returns_any_status_and_the_dechunked_body() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).unwrap();
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nnot r\r\n4\r\neady\r\n0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        assert_eq!(http_get(&addr, "/readyz").unwrap(), (503, "not ready".to_owned()));
        assert!(server.join().unwrap().starts_with("GET /readyz HTTP/1.1"));
    }
}
