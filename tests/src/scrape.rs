//! Reads a process's Prometheus `/metrics` over plain HTTP and parses the
//! text exposition format, as Prometheus would: one sample per series, keyed
//! by the series as rendered with its labels, e.g.
//! `participant_requests_total{rpc="prepare",outcome="yes"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `GET /metrics` from `address`.
pub async fn metrics_text(address: SocketAddr) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET http://{address}/metrics took over {SCRAPE_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{address}/metrics"))?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("not an HTTP response from {address}: {response:?}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET http://{address}/metrics: {head}");
    }
    Ok(body.to_string())
}

/// The samples of `GET /metrics`: series → value.
pub async fn metrics_scrape(address: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    parse_samples(&metrics_text(address).await?)
}

/// Parses the text format; comment lines (`# HELP`, `# TYPE`) are skipped.
pub fn parse_samples(text: &str) -> anyhow::Result<HashMap<String, f64>> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            bail!("not a sample line: {line:?}");
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number
                .parse()
                .with_context(|| format!("sample line {line:?}"))?,
        };
        samples.insert(series.to_string(), value);
    }
    Ok(samples)
}
