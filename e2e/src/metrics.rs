//! Reading a Swell process's Prometheus endpoint as Prometheus would: one
//! `GET /metrics` over HTTP on loopback, and samples out of the text.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free loopback address for a process's `--metrics-address`.
pub fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address")
}

/// `GET path` at `address` over HTTP/1.1: the status code and the body
/// (retried for a few seconds while the process starts).
pub async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(address).await {
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("send request");
            let mut response = String::new();
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_string(&mut response)).await.expect("an answer within 15 s").expect("read response");
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status line in {head:?}"));
            return (status, body.to_owned());
        }
        assert!(tokio::time::Instant::now() < deadline, "nothing serves {address}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of `GET /metrics` at `address`, which must answer 200.
pub async fn scrape(address: SocketAddr) -> String {
    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics at {address}: {body}");
    body
}

/// The value of the sample whose name and labels are exactly `series`
/// (e.g. `swell_reconciler_attempts_total{outcome="failed"}`); `None` when
/// the series is absent.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).next()
}

/// [`value`], 0 when the series is absent (a counter never incremented).
pub fn sample(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

/// The sum of the samples of `name` whose labels satisfy `labels` (given
/// the text between the braces), e.g. every outcome of one operation.
pub fn sum(text: &str, name: &str, labels: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (series, number) = line.rsplit_once(' ')?;
            let inside = series.strip_prefix(name)?.strip_prefix('{')?.strip_suffix('}')?;
            labels(inside).then(|| number.parse::<f64>().ok()).flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_exact_series() {
        let text = "# TYPE x counter\nx{a=\"1\"} 3\nx{a=\"12\"} 7\ny 2.5\n";
        assert_eq!(sample(text, "x{a=\"1\"}"), 3.0);
        assert_eq!(sample(text, "x{a=\"12\"}"), 7.0);
        assert_eq!(sample(text, "y"), 2.5);
        assert_eq!(sample(text, "z"), 0.0);
        assert_eq!(value(text, "z"), None);
        assert_eq!(sum(text, "x", |labels| labels.starts_with("a=\"1")), 10.0);
        assert_eq!(sum(text, "x", |labels| labels == "a=\"1\""), 3.0);
    }
}
