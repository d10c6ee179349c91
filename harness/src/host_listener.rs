//! A listener on the host itself, on every address it has: one TCP and one UDP socket on the
//! same port, dual-stack where the host has IPv6. Reach cases aim the agent at a host address
//! (a bridge's gateway, the host's own address) and this port: anything that arrives is a route
//! out of the bottle that no verdict saw.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};

/// How long a connection is read after it is accepted: long enough for a client's first bytes.
const READ_FOR: Duration = Duration::from_secs(2);

pub struct HostListener {
    pub port: u16,
    records: Arc<Mutex<Vec<Value>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HostListener {
    pub async fn bind() -> Result<Self> {
        // A port free for both protocols; `[::]` also hears IPv4 unless the host has no IPv6.
        for _ in 0..20 {
            let tcp = match TcpListener::bind("[::]:0").await {
                Ok(tcp) => tcp,
                Err(_) => TcpListener::bind("0.0.0.0:0").await?,
            };
            let local = tcp.local_addr()?;
            let Ok(udp) = UdpSocket::bind(SocketAddr::new(local.ip(), local.port())).await else {
                continue;
            };
            let records = Arc::new(Mutex::new(Vec::new()));
            let tasks = vec![
                tokio::spawn(accept(tcp, records.clone())),
                tokio::spawn(receive(udp, records.clone())),
            ];
            return Ok(HostListener {
                port: local.port(),
                records,
                tasks,
            });
        }
        anyhow::bail!("no port was free for both TCP and UDP on this host")
    }

    /// What arrived so far: one record per connection or datagram.
    pub fn records(&self) -> Vec<Value> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn record(proto: &str, from: SocketAddr, bytes: &[u8]) -> Value {
    json!({
        "proto": proto,
        "from": from.to_string(),
        "len": bytes.len(),
        "bytes": String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]),
    })
}

async fn accept(listener: TcpListener, records: Arc<Mutex<Vec<Value>>>) {
    while let Ok((mut stream, from)) = listener.accept().await {
        let records = records.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 16384];
            let deadline = tokio::time::Instant::now() + READ_FOR;
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            if let Ok(mut r) = records.lock() {
                r.push(record("tcp", from, &got));
            }
        });
    }
}

async fn receive(socket: UdpSocket, records: Arc<Mutex<Vec<Value>>>) {
    let mut buf = vec![0u8; 65536];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        if let Ok(mut r) = records.lock() {
            r.push(record("udp", from, &buf[..n]));
        }
    }
}

/// Whether a listener is needed: the case's URL names its port.
pub fn wanted(url: &str) -> bool {
    url.contains(PORT_PLACEHOLDER)
}

pub const PORT_PLACEHOLDER: &str = "{host_port}";
