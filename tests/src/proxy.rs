//! A TCP proxy for network faults (DESIGN.md "Failures we test by causing
//! them": "the network between coordinator and a participant cut or
//! slowed"). Put it between the coordinator and one participant
//! (`Cluster::set_shard_address`, then restart the coordinator) and switch
//! its mode while a load runs:
//!
//! - [`Proxy::heal`] (the start mode): bytes flow through unchanged;
//! - [`Proxy::cut`]: every open connection is reset at once (both sides get
//!   a TCP RST, whatever was in flight is lost) and every new one is
//!   accepted and reset, until healed;
//! - [`Proxy::slow`]: each chunk read from either side is written to the
//!   other side `delay` after it arrived (order kept, throughput not
//!   capped: added latency, as a long link has).
//!
//! Each connection is one task that forwards both directions and ends when
//! both sides have closed, when either fails, or at a cut. Dropping the
//! proxy stops accepting and resets every connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes read at once from one side.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks read but not yet written, per direction (back-pressure beyond).
const CHUNKS_QUEUED_MAX: usize = 256;

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward unchanged.
    Pass,
    /// Reset every connection, old and new.
    Cut,
    /// Forward each chunk this long after it arrived.
    Slow(Duration),
}

/// Counters, for tests that want to see the proxy was actually used.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    reset: AtomicU64,
    forwarded_bytes: AtomicU64,
}

/// A running proxy: listens on 127.0.0.1 (a free port) and forwards every
/// connection to `upstream`. See the module docs.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Starts a pass-through proxy to `upstream` on 127.0.0.1:0.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("the proxy's bound address");
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode_rx,
            Arc::clone(&counters),
        ));
        Proxy {
            addr,
            upstream,
            mode,
            counters,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for a gRPC endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Resets every open connection and every new one until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.set(Mode::Cut);
    }

    /// Delays each forwarded chunk, both directions, by `delay`.
    pub fn slow(&self, delay: Duration) {
        self.set(Mode::Slow(delay));
    }

    /// Back to plain forwarding. Connections reset by a cut stay closed;
    /// clients reconnect.
    pub fn heal(&self) {
        self.set(Mode::Pass);
    }

    fn set(&self, mode: Mode) {
        tracing::info!(proxy = %self.addr, upstream = %self.upstream, ?mode, "proxy mode");
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far (including ones reset at once).
    pub fn connections_accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections reset by a cut so far (open ones and refused new ones).
    pub fn connections_reset(&self) -> u64 {
        self.counters.reset.load(Ordering::Relaxed)
    }

    /// Bytes written to either side so far.
    pub fn forwarded_bytes(&self) -> u64 {
        self.counters.forwarded_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Dropping `mode` (the only sender) ends every connection task:
        // they treat a closed mode channel as a cut.
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // e.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        if *mode.borrow() == Mode::Cut {
            reset(client, &counters);
            continue;
        }
        tokio::spawn(connection(
            client,
            upstream,
            mode.clone(),
            Arc::clone(&counters),
        ));
    }
}

/// Closes `stream` with a TCP RST rather than a FIN (SO_LINGER 0; closing
/// then never blocks).
fn reset(stream: TcpStream, counters: &Counters) {
    let _ = stream.set_zero_linger();
    counters.reset.fetch_add(1, Ordering::Relaxed);
    drop(stream);
}

/// Returns once the mode is `Cut`, or the proxy is gone.
async fn until_cut(mode: &mut watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m == Mode::Cut).await;
}

/// Forwards one client connection to a fresh upstream connection.
async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    let _ = client.set_nodelay(true);
    let connected = tokio::select! {
        connected = TcpStream::connect(upstream) => connected,
        _ = until_cut(&mut mode) => return reset(client, &counters),
    };
    let mut server = match connected {
        Ok(server) => server,
        Err(error) => {
            tracing::debug!(%error, %upstream, "proxy cannot reach upstream");
            return reset(client, &counters);
        }
    };
    let _ = server.set_nodelay(true);
    let cut = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let both = futures::future::try_join(
            pipe(client_read, server_write, mode.clone(), &counters),
            pipe(server_read, client_write, mode.clone(), &counters),
        );
        tokio::select! {
            _ = both => false,
            _ = until_cut(&mut mode) => true,
        }
    };
    if cut {
        reset(client, &counters);
        reset(server, &counters);
    }
}

/// One direction: reads chunks from `from` and writes each to `to` once its
/// delay (the mode when it was read) has passed; at end of input, shuts
/// down `to`'s write side. An error on either side ends the pipe.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mode: watch::Receiver<Mode>,
    counters: &Counters,
) -> std::io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let read = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return Ok(()); // drops `queue`: the writer finishes after the last chunk
            }
            let delay = match *mode.borrow() {
                Mode::Slow(delay) => delay,
                Mode::Pass | Mode::Cut => Duration::ZERO,
            };
            if queue
                .send((Instant::now() + delay, buffer[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&chunk).await?;
            counters
                .forwarded_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1:0; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// Writes `message` and reads the echo back.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(message).await?;
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut echoed))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo"))??;
        Ok(echoed)
    }

    /// A connection through a cut proxy sees end of file or an error, soon.
    async fn assert_dead(stream: &mut TcpStream) {
        let _ = stream.write_all(b"anyone?").await;
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buffer))
            .await
            .expect("a cut connection is closed at once, not left hanging");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a cut connection delivered data: {read:?}"
        );
    }

    #[tokio::test]
    async fn forwards_then_cut_resets_then_heal_restores() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await.unwrap(), b"hello");
        assert!(proxy.forwarded_bytes() >= 5, "it went through the proxy");

        proxy.cut();
        assert_dead(&mut stream).await;
        let mut during_cut = TcpStream::connect(proxy.addr())
            .await
            .expect("the kernel completes the handshake; the proxy then resets");
        assert_dead(&mut during_cut).await;
        assert!(
            proxy.connections_reset() >= 2,
            "the open one and the new one"
        );

        proxy.heal();
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut healed, b"again").await.unwrap(), b"again");
        assert_eq!(proxy.connections_accepted(), 3);
    }

    #[tokio::test]
    async fn slow_delays_each_direction_and_heal_speeds_up() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut stream, b"warm").await.unwrap();

        let delay = Duration::from_millis(150);
        proxy.slow(delay);
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await.unwrap(), b"slow");
        let slow = started.elapsed();
        assert!(slow >= 2 * delay, "one delay each way: took {slow:?}");

        proxy.heal();
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"fast").await.unwrap(), b"fast");
        let fast = started.elapsed();
        assert!(fast < delay, "healed: took {fast:?}");
    }

    #[tokio::test]
    async fn half_close_is_forwarded_and_drop_resets() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        stream.write_all(b"bye").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut echoed))
            .await
            .expect("the echo server sees end of file and closes")
            .unwrap();
        assert_eq!(echoed, b"bye");

        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"x").await.unwrap();
        drop(proxy);
        assert_dead(&mut open).await;
    }
}
