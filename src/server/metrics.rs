//! `--metrics ADDR`: Prometheus text exposition over plain HTTP (`GET /metrics`).

use std::fmt::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::engine::Engine;

/// Render the current metrics in Prometheus text format.
pub fn render(engine: &Engine) -> String {
    let mut out = String::new();
    let catalog = engine.catalog();
    let stats = engine.stats();
    let _ = writeln!(out, "# HELP velocity_ticks_total Ticks committed since the data directory was created.");
    let _ = writeln!(out, "# TYPE velocity_ticks_total counter");
    let _ = writeln!(out, "velocity_ticks_total {}", stats.tick);

    // Tick latency histogram over the retained window of recent ticks.
    let buckets_ms = [0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];
    let _ = writeln!(out, "# HELP velocity_tick_duration_seconds Time to apply a tick (recent ticks).");
    let _ = writeln!(out, "# TYPE velocity_tick_duration_seconds histogram");
    for b in buckets_ms {
        let n = stats.tick_latencies_us.iter().filter(|us| (**us as f64) <= b * 1000.0).count();
        let _ = writeln!(out, "velocity_tick_duration_seconds_bucket{{le=\"{}\"}} {n}", b / 1000.0);
    }
    let total: u64 = stats.tick_latencies_us.iter().sum();
    let _ = writeln!(out, "velocity_tick_duration_seconds_bucket{{le=\"+Inf\"}} {}", stats.tick_latencies_us.len());
    let _ = writeln!(out, "velocity_tick_duration_seconds_sum {}", total as f64 / 1e6);
    let _ = writeln!(out, "velocity_tick_duration_seconds_count {}", stats.tick_latencies_us.len());

    let _ = writeln!(out, "# HELP velocity_relation_rows Rows in each table and materialized view.");
    let _ = writeln!(out, "# TYPE velocity_relation_rows gauge");
    for r in catalog.iter() {
        let rows = stats.view_rows.get(&r.id).copied().unwrap_or(0);
        let _ = writeln!(out, "velocity_relation_rows{{name=\"{}\",kind=\"{}\"}} {rows}", r.name, r.kind.sql_name());
    }
    let _ = writeln!(out, "# HELP velocity_relation_last_change_tick Last tick that changed each relation.");
    let _ = writeln!(out, "# TYPE velocity_relation_last_change_tick gauge");
    for r in catalog.iter() {
        if let Some(t) = stats.last_change.get(&r.id) {
            let _ = writeln!(out, "velocity_relation_last_change_tick{{name=\"{}\"}} {t}", r.name);
        }
    }
    let _ = writeln!(out, "# HELP velocity_storage_bytes Size of RocksDB's SST files.");
    let _ = writeln!(out, "# TYPE velocity_storage_bytes gauge");
    let _ = writeln!(out, "velocity_storage_bytes {}", engine.store().size_bytes());
    use super::login_throttle::{LOGIN_DELAY_MS, LOGIN_FAILURES, LOGINS_THROTTLED};
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(out, "# HELP velocity_login_failures_total Logins refused for a wrong password or an unknown user.");
    let _ = writeln!(out, "# TYPE velocity_login_failures_total counter");
    let _ = writeln!(out, "velocity_login_failures_total {}", LOGIN_FAILURES.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP velocity_logins_throttled_total Login attempts from an address with recent failures, made to wait their turn."
    );
    let _ = writeln!(out, "# TYPE velocity_logins_throttled_total counter");
    let _ = writeln!(out, "velocity_logins_throttled_total {}", LOGINS_THROTTLED.load(Relaxed));
    let _ = writeln!(out, "# HELP velocity_login_delay_seconds_total Time login attempts waited behind earlier failures.");
    let _ = writeln!(out, "# TYPE velocity_login_delay_seconds_total counter");
    let _ = writeln!(out, "velocity_login_delay_seconds_total {}", LOGIN_DELAY_MS.load(Relaxed) as f64 / 1000.0);
    out
}

/// Serve `GET /metrics` until the listener fails. Anything else gets 404.
pub async fn serve(listener: TcpListener, engine: Engine) -> std::io::Result<()> {
    loop {
        let (mut socket, _) = listener.accept().await?;
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = socket.read(&mut request).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", render(&engine))
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
