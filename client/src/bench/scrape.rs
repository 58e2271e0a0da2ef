//! Reading a process's Prometheus `/metrics` (plain HTTP) into samples,
//! and the two figures the bench takes from the differences of two
//! scrapes: log records per fsync (coordinator) and local commits
//! (participants). The series are documented in `coordinator/src/metrics.rs`
//! and `participant/src/metrics.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sum and count of the coordinator's records-per-fsync histogram.
pub const RECORDS_PER_FSYNC_SUM: &str = "coordinator_log_records_per_fsync_sum";
pub const RECORDS_PER_FSYNC_COUNT: &str = "coordinator_log_records_per_fsync_count";
/// Local transactions (batches) a participant committed.
pub const LOCAL_COMMITS_TOTAL: &str = "participant_local_commits_total";

/// Series → value, as one scrape saw them.
pub type Samples = HashMap<String, f64>;

/// `GET /metrics` from `address`, parsed.
pub async fn scrape(address: SocketAddr) -> Result<Samples, String> {
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
        .map_err(|_| format!("GET http://{address}/metrics took over {SCRAPE_TIMEOUT:?}"))?
        .map_err(|e| format!("GET http://{address}/metrics: {e}"))?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Err(format!("not an HTTP response from {address}"));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("GET http://{address}/metrics: {head}"));
    }
    parse_samples(body)
}

/// Parses the text exposition format; comment lines are skipped.
pub fn parse_samples(text: &str) -> Result<Samples, String> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("not a sample line: {line:?}"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number
                .parse()
                .map_err(|_| format!("not a number in sample line {line:?}"))?,
        };
        samples.insert(series.to_string(), value);
    }
    Ok(samples)
}

/// One scrape of a cluster: the coordinator and every participant.
#[derive(Clone, Debug, Default)]
pub struct ClusterSamples {
    pub coordinator: Samples,
    pub participants: Vec<Samples>,
}

fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

impl ClusterSamples {
    /// Log records per fsync between `self` (before) and `after`; None when
    /// no fsync happened.
    pub fn records_per_fsync(&self, after: &ClusterSamples) -> Option<f64> {
        let delta = |series| value(&after.coordinator, series) - value(&self.coordinator, series);
        let fsyncs = delta(RECORDS_PER_FSYNC_COUNT);
        (fsyncs > 0.0).then(|| delta(RECORDS_PER_FSYNC_SUM) / fsyncs)
    }

    /// Local commits of every participant between `self` and `after`.
    pub fn local_commits(&self, after: &ClusterSamples) -> f64 {
        let total = |samples: &[Samples]| -> f64 {
            samples.iter().map(|s| value(s, LOCAL_COMMITS_TOTAL)).sum()
        };
        total(&after.participants) - total(&self.participants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(text: &str) -> Samples {
        parse_samples(text).expect("valid exposition text")
    }

    #[test]
    fn the_text_format_parses_with_labels_and_infinities() {
        let parsed = samples(
            "# HELP x y\n# TYPE x counter\nx 3\n\
             coordinator_log_records_per_fsync_bucket{le=\"+Inf\"} 12\ny{a=\"b c\"} +Inf\n",
        );
        assert_eq!(parsed["x"], 3.0);
        assert_eq!(
            parsed["coordinator_log_records_per_fsync_bucket{le=\"+Inf\"}"],
            12.0
        );
        assert_eq!(parsed["y{a=\"b c\"}"], f64::INFINITY);
        assert!(parse_samples("lonely").is_err());
        assert!(parse_samples("x notanumber").is_err());
    }

    #[test]
    fn figures_come_from_the_difference_of_two_scrapes() {
        let before = ClusterSamples {
            coordinator: samples(
                "coordinator_log_records_per_fsync_sum 100\ncoordinator_log_records_per_fsync_count 10\n",
            ),
            participants: vec![samples("participant_local_commits_total 5\n"), Samples::new()],
        };
        let after = ClusterSamples {
            coordinator: samples(
                "coordinator_log_records_per_fsync_sum 1060\ncoordinator_log_records_per_fsync_count 40\n",
            ),
            participants: vec![
                samples("participant_local_commits_total 25\n"),
                samples("participant_local_commits_total 7\n"),
            ],
        };
        assert_eq!(before.records_per_fsync(&after), Some(32.0));
        assert_eq!(before.local_commits(&after), 27.0);
        assert_eq!(after.records_per_fsync(&after), None, "no fsync between");
    }
}
