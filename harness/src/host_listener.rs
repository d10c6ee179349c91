//! A listener on the host itself, on every address it has: TCP and UDP on one port, IPv4 and
//! (where the host has it) IPv6. Reach cases aim the agent at a host address
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
        // One port free for both protocols on both families. IPv4 and IPv6 get sockets of their
        // own: a dual-stack socket is not handed IPv4 multicast, which a daemon bound on
        // 0.0.0.0 would hear.
        for _ in 0..20 {
            let tcp4 = TcpListener::bind("0.0.0.0:0").await?;
            let port = tcp4.local_addr()?.port();
            let Ok(udp4) = UdpSocket::bind(("0.0.0.0", port)).await else {
                continue;
            };
            let records = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = vec![
                tokio::spawn(accept(tcp4, records.clone())),
                tokio::spawn(receive(udp4, records.clone())),
            ];
            if ipv6_available() {
                let (Ok(tcp6), Ok(udp6)) = (tcp_v6_only(port), udp_v6_only(port)) else {
                    continue;
                };
                tasks.push(tokio::spawn(accept(tcp6, records.clone())));
                tasks.push(tokio::spawn(receive(udp6, records.clone())));
            }
            return Ok(HostListener {
                port,
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

fn ipv6_available() -> bool {
    std::net::UdpSocket::bind("[::]:0").is_ok()
}

fn v6_only(kind: socket2::Type, port: u16) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, kind, None)?;
    socket.set_only_v6(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(socket)
}

fn tcp_v6_only(port: u16) -> std::io::Result<TcpListener> {
    let socket = v6_only(socket2::Type::STREAM, port)?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

fn udp_v6_only(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::from_std(v6_only(socket2::Type::DGRAM, port)?.into())
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
