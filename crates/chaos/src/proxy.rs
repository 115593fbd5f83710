//! TCP proxies that carry node-to-node traffic and obey a shared [`Links`] table.
//!
//! A link `from -> to` is every connection node `from` opens to node `to` (its requests and
//! their replies). Cutting it closes those connections and refuses new ones, so node `from`
//! cannot call node `to`, while `to` can still call `from`: a one-way partition at the level
//! of RPCs. Delay holds every chunk for the given time in both directions.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The address node `i` (from 0) binds and calls its peers from.
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8))
}

/// The address peers call node `i` at (its proxy).
pub fn proxy_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 101 + i as u8))
}

/// Which node a connection comes from, by its source address.
fn node_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0] && (11..=99).contains(&v4.octets()[3]) => {
            Some(usize::from(v4.octets()[3]) - 11)
        }
        _ => None,
    }
}

/// The state of one directed link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    /// No connection from `from` to `to` gets through.
    pub cut: bool,
    /// Added to every chunk in both directions.
    pub delay: Duration,
}

/// Every link's state; changes wake the proxies so cut links drop their connections at once.
#[derive(Clone)]
pub struct Links {
    state: Arc<Mutex<BTreeMap<(usize, usize), LinkState>>>,
    changed: watch::Sender<u64>,
}

impl Default for Links {
    fn default() -> Self {
        Self { state: Arc::default(), changed: watch::Sender::new(0) }
    }
}

impl Links {
    /// The state of `from -> to`.
    pub fn get(&self, from: usize, to: usize) -> LinkState {
        self.state.lock().map(|s| s.get(&(from, to)).copied().unwrap_or_default()).unwrap_or_default()
    }

    /// Changes `from -> to`.
    pub fn set(&self, from: usize, to: usize, link: LinkState) {
        if let Ok(mut s) = self.state.lock() {
            s.insert((from, to), link);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Restores every link.
    pub fn heal(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.clear();
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Starts the proxy of node `to`: listens on `listen`, forwards to `target`.
pub async fn start(listen: TcpListener, target: SocketAddr, to: usize, links: Links) {
    loop {
        let Ok((inbound, peer)) = listen.accept().await else { continue };
        let from = node_of(peer.ip());
        let links = links.clone();
        tokio::spawn(async move {
            if let Some(from) = from {
                if links.get(from, to).cut {
                    return;
                }
            }
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            carry(inbound, outbound, from, to, links).await;
        });
    }
}

/// Copies both ways until either side closes or the link is cut.
async fn carry(inbound: TcpStream, outbound: TcpStream, from: Option<usize>, to: usize, links: Links) {
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let mut changes = links.watch();
    let state = move || from.map(|f| links.get(f, to)).unwrap_or_default();
    let cut = {
        let state = state.clone();
        async move {
            while changes.changed().await.is_ok() {
                if state().cut {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = pump(in_read, out_write, state.clone()) => {}
        _ = pump(out_read, in_write, state) => {}
        _ = cut => {}
    }
}

/// Copies `read` to `write` chunk by chunk, honouring the link's state for each chunk.
async fn pump(
    mut read: impl AsyncReadExt + Unpin,
    mut write: impl AsyncWriteExt + Unpin,
    state: impl Fn() -> LinkState,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let link = state();
        if link.cut {
            return;
        }
        if !link.delay.is_zero() {
            tokio::time::sleep(link.delay).await;
        }
        if write.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
