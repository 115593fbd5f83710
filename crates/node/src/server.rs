//! Runs a node: binds the listener, serves HTTP, bootstraps, and shuts down gracefully.
//!
//! The accept loop is ours (not `axum::serve`) so that every connection is bounded: a cap
//! on open connections, and each connection wrapped in [`Guarded`], which checks request
//! heads, their time and size, and idle time between requests before hyper reads them.
//! Body timeouts are the extractor's (`ApiJson`). With TLS the loop hands each connection
//! to rustls first (in the connection's own task, bounded by the header timeout) and
//! answers a plain-HTTP request with one JSON `400` instead of a handshake error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{ConnectionLimits, NodeConfig};
use crate::error::NodeError;
use crate::http_guard::{Activity, Guarded, InFlight, Timeouts};
use crate::node::Node;
use crate::security::guard::Connection;
use crate::security::{is_loopback_bind, Security, Tls};

/// How long requests still running at a stop may take to finish.
const GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves `config` until `shutdown` completes, then stops Raft and flushes storage.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::metrics::install();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("bind the HTTP listener on {}", config.listen))?;
    let limits = config.limits;
    let _ = crate::api::error::BODY_TIMEOUT.set(Duration::from_millis(limits.body_timeout_ms));
    let security = Arc::new(Security::load(&config.security, &config.name)?);
    announce_security(&config, &security);
    let node = Node::open(config, security.clone()).await?;
    tracing::info!(
        node = %node.config.name,
        listen = %node.config.listen,
        data_dir = %node.config.data_dir.display(),
        members = node.config.members.len(),
        "node started"
    );
    tokio::spawn(node.clone().bootstrap());
    let duties = [
        tokio::spawn(crate::locks::leader_duties(node.group0.clone())),
        tokio::spawn(crate::queues::placement_duties(node.queues.clone())),
        tokio::spawn(crate::queues::host_duties(node.queues.clone())),
        tokio::spawn(crate::queues::expiry_duties(node.queues.clone())),
    ];
    let cache_task = node.take_cache_outbox().map(|outbox| tokio::spawn(node.cache.clone().run(outbox)));
    let reload = security.tokens.clone().map(|tokens| tokio::spawn(reload_tokens_on_sighup(tokens)));
    let app = crate::api::router(node.clone());
    let tls = security.tls.clone();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    serve_connection(tcp, remote, tls.as_ref(), &app, graceful.watcher(), &connections, limits)
                }
                // Out of file descriptors or a connection reset before it was accepted: the
                // listener itself is fine; a short pause keeps an fd shortage from spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    // Long waits (lock queues, lease renewals) must not hold a stop up for long.
    if tokio::time::timeout(GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("closing requests still running after {} s", GRACE.as_secs());
    }
    tracing::info!("shutting down");
    for duty in duties {
        duty.abort();
    }
    if let Some(task) = cache_task {
        task.abort();
    }
    if let Some(task) = reload {
        task.abort();
    }
    node.shutdown().await;
    Ok(())
}

/// Serves one accepted connection in its own task, or refuses it when the node already
/// has `max_connections` open.
fn serve_connection(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    tls: Option<&Tls>,
    app: &axum::Router,
    watcher: Watcher,
    connections: &Arc<Semaphore>,
    limits: ConnectionLimits,
) {
    // Small request/response exchanges: never let Nagle hold a reply back.
    let _ = tcp.set_nodelay(true);
    let Ok(permit) = connections.clone().try_acquire_owned() else {
        crate::metrics::record_refused_connection();
        let error = NodeError::Unavailable(format!(
            "this node already serves {} connections (HTTP_MAX_CONNECTIONS); retry later or on another node",
            limits.max_connections
        ));
        tokio::spawn(refuse(tcp, error));
        return;
    };
    let app = app.clone();
    let acceptor = tls.map(|t| t.acceptor.clone());
    tokio::spawn(async move {
        let plain = Connection { verified_certificate: false, remote: Some(remote) };
        match acceptor {
            None => serve_http(tcp, plain, app, watcher, limits).await,
            Some(acceptor) => {
                let header_timeout = Duration::from_millis(limits.header_timeout_ms);
                if let Some(stream) = handshake(tcp, &acceptor, header_timeout).await {
                    let verified = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
                    let connection = Connection { verified_certificate: verified, ..plain };
                    serve_http(stream, connection, app, watcher, limits).await;
                }
            }
        }
        drop(permit);
    });
}

/// The TLS handshake of a new connection, within `limit`. A client that speaks plain HTTP
/// to an HTTPS node gets one JSON `400` saying so.
async fn handshake(
    tcp: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(limit, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            let error = NodeError::InvalidArgument(
                "this node serves HTTPS only (TLS_CERT_FILE is set): use an https:// endpoint".into(),
            );
            refuse(tcp, error).await;
            return None;
        }
        Ok(Ok(1)) => {}
        _ => return None,
    }
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Serves HTTP/1.1 on one connection (plain or TLS) until it closes.
async fn serve_http<I>(
    io: I,
    connection: Connection,
    app: axum::Router,
    watcher: Watcher,
    limits: ConnectionLimits,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    // The guard times heads and idle connections; hyper's own timer would close a
    // connection without an answer.
    http.header_read_timeout(None).keep_alive(true);
    let activity = Arc::new(Activity::default());
    let timeouts = Timeouts {
        header: Duration::from_millis(limits.header_timeout_ms),
        idle: Duration::from_millis(limits.idle_timeout_ms),
    };
    let io = TokioIo::new(Guarded::new(io, timeouts, activity.clone()));
    let service = Counted { inner: TowerToHyperService::new(app), activity, connection };
    // Errors here are a client's (a reset, a malformed body); the guard has already
    // answered a bad head.
    if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// The router as a hyper service that counts each request as in flight on its connection
/// until its answer has been sent (or dropped), so the guard never times a connection out
/// while the node is still answering it.
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    connection: Connection,
}

type Answer = hyper::Response<CountedBody>;

impl<S> hyper::service::Service<hyper::Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<
        hyper::Request<Incoming>,
        Response = hyper::Response<Body>,
        Error = Infallible,
    >,
    S::Future: Send + 'static,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.connection);
        let in_flight = self.activity.begin();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| CountedBody { body, _in_flight: in_flight }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] until hyper is done with it.
struct CountedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection it will not serve (over the connection limit, or plain HTTP to an
/// HTTPS node) with `error` in our JSON, and closes it.
async fn refuse(mut tcp: TcpStream, error: NodeError) {
    let answer = error.to_http1();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = tcp.write_all(&answer).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// Logs what protects this node, and loudly what does not.
fn announce_security(config: &NodeConfig, security: &Security) {
    let host = config.listen.rsplit_once(':').map_or(config.listen.as_str(), |(host, _)| host);
    let peers = match (&security.tls, &security.cluster_secret) {
        (Some(_), _) => "mutual TLS",
        (None, Some(_)) => "cluster secret",
        (None, None) => "none",
    };
    let clients = security.tokens.as_ref().map(|t| t.current().len());
    tracing::info!(peers, principals = clients.unwrap_or(0), tokens = clients.is_some(), "security");
    if config.security.insecure && !security.peers_authenticate() && !is_loopback_bind(host) {
        tracing::warn!(
            listen = %config.listen,
            "SINKRON_INSECURE: node-to-node calls are NOT authenticated on a reachable address; \
             anyone who reaches this port can act as a node and take the cluster over"
        );
    }
    if clients.is_none() && !is_loopback_bind(host) {
        tracing::warn!(
            listen = %config.listen,
            "no AUTH_TOKENS_FILE: every client that reaches this port may use the whole API, membership included"
        );
    }
}

/// Reads the tokens file again on every SIGHUP; a broken file keeps the previous tokens.
async fn reload_tokens_on_sighup(tokens: crate::security::TokenStore) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: AUTH_TOKENS_FILE is read only at start");
        return;
    };
    while hangups.recv().await.is_some() {
        match tokens.reload() {
            Ok(count) => tracing::info!(principals = count, "AUTH_TOKENS_FILE reloaded"),
            Err(e) => tracing::error!(error = %e, "AUTH_TOKENS_FILE not reloaded; the previous tokens stay"),
        }
    }
}
