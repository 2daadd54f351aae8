//! The controller's Prometheus metrics: what the reconciler's last pass saw,
//! above all the expansions that are stuck and why. Served as plain text on
//! `GET /metrics` by a deliberately tiny HTTP responder (one request per
//! connection, bounded read, bounded time).

use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use std::collections::BTreeMap;

use crate::backends::CallStats;
use crate::reconciler::{PassReport, Reconciler};

/// Renders a pass report and the backend calls made so far in the
/// Prometheus text format.
pub fn render(report: &PassReport, calls: &BTreeMap<&'static str, CallStats>) -> String {
    let mut out = String::new();
    let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge(&mut out, "swell_expansions_pending", "Volumes whose backend is short of the desired size.", report.pending);
    gauge(&mut out, "swell_expansions_stuck", "Volumes pending for longer than the stuck threshold.", report.stuck.len());
    gauge(&mut out, "swell_reconciler_completed", "Expansions the last reconciler pass completed.", report.completed);
    gauge(&mut out, "swell_reconciler_failed", "Expansions the last reconciler pass failed to complete.", report.failed);
    gauge(&mut out, "swell_announcements_owed", "Volumes whose grown size their clients still have to be told.", report.announcements_owed);
    let _ = writeln!(out, "# HELP swell_backend_calls_total Backend calls by step and outcome.\n# TYPE swell_backend_calls_total counter");
    for (step, stats) in calls {
        let _ = writeln!(out, "swell_backend_calls_total{{step=\"{step}\",outcome=\"ok\"}} {}", stats.calls - stats.failures);
        let _ = writeln!(out, "swell_backend_calls_total{{step=\"{step}\",outcome=\"error\"}} {}", stats.failures);
    }
    let _ = writeln!(out, "# HELP swell_backend_call_seconds_total Time spent in backend calls by step.\n# TYPE swell_backend_call_seconds_total counter");
    for (step, stats) in calls {
        let _ = writeln!(out, "swell_backend_call_seconds_total{{step=\"{step}\"}} {:.6}", stats.seconds);
    }
    let _ = writeln!(
        out,
        "# HELP swell_expansion_stuck_seconds How long a stuck expansion has been pending, with its reason.\n# TYPE swell_expansion_stuck_seconds gauge"
    );
    for stuck in &report.stuck {
        let _ = writeln!(
            out,
            "swell_expansion_stuck_seconds{{volume_id=\"{}\",desired_bytes=\"{}\",current_bytes=\"{}\",reason=\"{}\"}} {}",
            escape(&stuck.volume_id),
            stuck.desired_bytes,
            stuck.current_bytes,
            escape(&stuck.reason),
            stuck.pending_for.as_secs()
        );
    }
    out
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, reconciler: Reconciler, shutdown: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "serving metrics");
    tokio::pin!(shutdown);
    loop {
        let (mut stream, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics accept failed");
                    continue;
                }
            },
        };
        let reconciler = reconciler.clone();
        tokio::spawn(async move {
            let answer = async {
                let mut request = vec![0u8; 2048];
                let n = stream.read(&mut request).await?;
                let first_line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or_default().to_owned();
                let response = if first_line.starts_with("GET /metrics ") {
                    let body = render(&reconciler.last_report(), &reconciler.call_stats());
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                stream.write_all(response.as_bytes()).await?;
                stream.shutdown().await
            };
            if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(5), answer).await {
                tracing::debug!(error = %err, "metrics request failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconciler::StuckExpansion;

    #[test]
    fn stuck_volumes_appear_with_their_reason() {
        let report = PassReport {
            pending: 2,
            stuck: vec![StuckExpansion {
                volume_id: "local:ab".into(),
                desired_bytes: 2,
                current_bytes: 1,
                pending_for: Duration::from_secs(700),
                reason: "backend unavailable: \"osd down\"".into(),
            }],
            ..Default::default()
        };
        let calls = BTreeMap::from([("grow volume", CallStats { calls: 3, failures: 1, seconds: 0.25 })]);
        let text = render(&report, &calls);
        assert!(text.contains(r#"swell_backend_calls_total{step="grow volume",outcome="ok"} 2"#), "{text}");
        assert!(text.contains(r#"swell_backend_calls_total{step="grow volume",outcome="error"} 1"#), "{text}");
        assert!(text.contains("swell_expansions_pending 2"), "{text}");
        assert!(text.contains("swell_expansions_stuck 1"), "{text}");
        assert!(
            text.contains(
                r#"swell_expansion_stuck_seconds{volume_id="local:ab",desired_bytes="2",current_bytes="1",reason="backend unavailable: \"osd down\""} 700"#
            ),
            "{text}"
        );
    }
}
