//! Pieces shared by the participant's integration tests: a fake
//! coordinator that answers GetDecision from a table, a scraper of the
//! Prometheus `/metrics` text, and a free port.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use booking_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use booking_proto::v1::{
    BookReply, BookRequest, Decision, GetDecisionReply, GetDecisionRequest, GetRouteReply,
    GetRouteRequest, GetTransactionRequest, RetryTransactionRequest, TransactionStatus,
};
use tonic::{Request, Response, Status};

/// A coordinator that knows only GetDecision, from a table.
#[derive(Clone, Default)]
pub struct FakeCoordinator {
    pub decisions: Arc<Mutex<HashMap<String, Decision>>>,
    pub asked: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl Coordinator for FakeCoordinator {
    async fn book(&self, _: Request<BookRequest>) -> Result<Response<BookReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_transaction(
        &self,
        _: Request<GetTransactionRequest>,
    ) -> Result<Response<TransactionStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn get_decision(
        &self,
        request: Request<GetDecisionRequest>,
    ) -> Result<Response<GetDecisionReply>, Status> {
        let txid = request.into_inner().txid;
        self.asked.lock().expect("not poisoned").push(txid.clone());
        let decision = self
            .decisions
            .lock()
            .expect("not poisoned")
            .get(&txid)
            .copied()
            .unwrap_or(Decision::InProgress);
        Ok(Response::new(GetDecisionReply {
            decision: decision as i32,
        }))
    }
    async fn get_route(
        &self,
        _: Request<GetRouteRequest>,
    ) -> Result<Response<GetRouteReply>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn retry_transaction(
        &self,
        _: Request<RetryTransactionRequest>,
    ) -> Result<Response<TransactionStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

pub async fn start_coordinator(fake: FakeCoordinator) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(fake))
            .serve_with_incoming(incoming),
    );
    address
}

/// A port nothing listens on now (bound and released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// GET /metrics from `address`, parsed: each sample line's series (name
/// and labels, as rendered) to its value. A blocking plain-HTTP request.
pub fn scrape(address: SocketAddr) -> HashMap<String, f64> {
    let mut stream =
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).expect("connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}
