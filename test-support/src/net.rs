//! The network around a test: a proxy that can cut a service off, free ports.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy in front of a real service that a test can cut and restore, to simulate
/// the service becoming unreachable without stopping it for everyone else.
pub struct TcpProxy {
    /// Where to connect instead of the service.
    pub addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Passing>>>,
    accept: JoinHandle<()>,
}

/// A connection the proxy passes, and whether it alone is frozen.
struct Passing {
    task: JoinHandle<()>,
    frozen: Arc<AtomicBool>,
}

impl TcpProxy {
    /// A proxy on a port of its own in front of `upstream` (`host:port`), passing
    /// connections through when `enabled`.
    pub async fn start(upstream: &str, enabled: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let enabled = Arc::new(AtomicBool::new(enabled));
        let frozen = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<Passing>>> = Arc::default();
        let upstream = upstream.to_owned();
        let accept = {
            let (enabled, frozen) = (enabled.clone(), frozen.clone());
            let connections = connections.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        return;
                    };
                    if !enabled.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let upstream = upstream.clone();
                    let frozen = [frozen.clone(), Arc::default()];
                    let this = frozen[1].clone();
                    let task = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(&upstream).await {
                            let (from_client, to_client) = inbound.into_split();
                            let (from_service, to_service) = outbound.into_split();
                            tokio::join!(
                                forward(from_client, to_service, &frozen),
                                forward(from_service, to_client, &frozen),
                            );
                        }
                    });
                    connections
                        .lock()
                        .unwrap()
                        .push(Passing { task, frozen: this });
                }
            })
        };
        Self {
            addr,
            enabled,
            frozen,
            connections,
            accept,
        }
    }

    /// Stop passing bytes either way on the open connections, leaving them open: a peer
    /// that stops answering (a network partition, a hung service).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Stop passing bytes either way on the connections open now, leaving them open, and
    /// pass those made from now on: one path through the network goes silent while a new
    /// one works (a firewall or NAT forgot the connection, a load balancer's backend left).
    pub fn freeze_open(&self) {
        for open in self.connections.lock().unwrap().iter() {
            open.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Refuse new connections and cut the open ones.
    pub fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        for open in self.connections.lock().unwrap().drain(..) {
            open.task.abort();
        }
    }

    /// End every open connection (each peer sees its connection close, and what a frozen
    /// connection held back is never delivered), then pass bytes again on the connections
    /// made from now on: a path through the network reset, or a service restarted.
    pub async fn reset(&self) {
        let open: Vec<Passing> = self.connections.lock().unwrap().drain(..).collect();
        // Every one told first, then each awaited: none passes bytes once one has ended.
        for open in &open {
            open.task.abort();
        }
        for open in open {
            let _ = open.task.await;
        }
        self.frozen.store(false, Ordering::SeqCst);
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A TCP port free at the time of the call, for a process that must be told its port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copy bytes from `from` to `to` until either side closes, holding them while either of
/// `frozen` is set (the proxy's, the connection's own).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: &[Arc<AtomicBool>; 2],
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while frozen.iter().any(|f| f.load(Ordering::SeqCst)) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
