//! A sidecar's HTTP endpoint (`admin.http_addr`): plain HTTP/1.1 GETs over a socket, and its
//! Prometheus text read as numbers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An HTTP reply: the status, the head lowercased (for header checks) and the body.
pub struct HttpReply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// `GET path` on `127.0.0.1:port`, connect within 5 s, the whole reply within 10 s; panics
/// when there is no reply.
pub fn http_get(port: u16, path: &str) -> HttpReply {
    try_http_get(port, path).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_get`], or why there is no reply.
pub fn try_http_get(port: u16, path: &str) -> Result<HttpReply, String> {
    let addr = ([127, 0, 0, 1], port).into();
    let get = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw)
    };
    let raw = get().map_err(|e| format!("GET {path} from {addr}: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path} from {addr}: bad reply: {raw}"))?;
    Ok(HttpReply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    })
}

/// The body of `/metrics` on `port` (status 200 required).
pub fn metrics_text(port: u16) -> String {
    let r = http_get(port, "/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.body);
    r.body
}

/// The value of the first `/metrics` line that starts with `series`, e.g.
/// `"pgsidecar_lock_timeouts_total "` or `"pgsidecar_requests_routed_total{route=\"replica\"} "`
/// (labels as the exporter orders them); None while the series has not been exported.
pub fn try_metric(port: u16, series: &str) -> Option<f64> {
    metrics_text(port)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// [`try_metric`] that panics with the whole text when the series is missing.
pub fn metric(port: u16, series: &str) -> f64 {
    let text = metrics_text(port);
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
}

/// A counter that may not have been exported yet (its label set unused so far): 0 then.
pub fn counter(port: u16, series: &str) -> f64 {
    try_metric(port, series).unwrap_or(0.0)
}

/// Prometheus text exposition → `name{labels}` → value, labels sorted so lookups need not know
/// the exporter's order.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        out.insert(key, value);
    }
    out
}
