//! Opt-in Prometheus endpoint (`--metrics ADDR`): the figures of `monitor status` as text exposition.

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::status::Status;

/// `monitor_<path>` for every number in the status; drop counters get a `reason` label.
pub fn render(status: &Value) -> String {
    let mut out = String::new();
    flatten("monitor", status, &mut out);
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let key: String = key
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                    .collect();
                if prefix == "monitor" && key == "kernel_drops" {
                    for (reason, n) in v.as_object().into_iter().flatten() {
                        if let Some(n) = n.as_f64() {
                            out.push_str(&format!("monitor_kernel_drops_total{{reason=\"{reason}\"}} {n}\n"));
                        }
                    }
                    continue;
                }
                flatten(&format!("{prefix}_{key}"), v, out);
            }
        }
        Value::Number(n) => out.push_str(&format!("{prefix} {n}\n")),
        Value::Bool(b) => out.push_str(&format!("{prefix} {}\n", u8::from(*b))),
        _ => {}
    }
}

/// Serves the metrics; each scrape asks the event loop for the status on `status`.
pub async fn serve(listener: TcpListener, status: mpsc::Sender<oneshot::Sender<Status>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let status = status.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut request)).await;
            let (reply, answer) = oneshot::channel();
            if status.send(reply).await.is_err() {
                return;
            }
            let Ok(answer) = answer.await else { return };
            // A struct of numbers, strings and maps always serialises.
            let body = render(&serde_json::to_value(&answer).unwrap_or_default());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_numbers_become_metrics() {
        let status = serde_json::json!({
            "events": 12,
            "flows": { "blocked": 2 },
            "kernel_drops": { "ringbuf_full": 3 },
            "mode": "block",
        });
        let text = render(&status);
        assert!(text.contains("monitor_events 12\n"), "{text}");
        assert!(text.contains("monitor_flows_blocked 2\n"), "{text}");
        assert!(text.contains("monitor_kernel_drops_total{reason=\"ringbuf_full\"} 3\n"), "{text}");
        assert!(!text.contains("mode"), "{text}");
    }
}
