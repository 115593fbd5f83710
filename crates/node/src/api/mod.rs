//! The HTTP API: public endpoints under `/v1`, probes, metrics, the OpenAPI document, and
//! the node-to-node Raft RPC under `/raft/{group}`.
//!
//! Routes are registered through `utoipa-axum`, so the router and `/openapi.json` come from
//! the same annotations and cannot drift apart.

pub mod cache;
pub mod cluster;
pub mod error;
pub mod kv;
pub mod locks;
pub mod overview;
pub mod queues;
pub mod quota;
pub mod raft;
pub mod snapshot;
pub mod ui;
pub mod watch;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::NodeError;
use crate::node::Node;

/// Largest body of a public request.
pub const PUBLIC_BODY_MAX_BYTES: usize = 1024 * 1024;
/// Largest body of a Raft RPC (a batch of entries or a snapshot chunk).
pub const RAFT_BODY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Shared state of every handler.
pub type AppState = Arc<Node>;

#[derive(OpenApi)]
#[openapi(
    components(schemas(kv::Consistency, error::ErrorBody)),
    info(title = "Sinkron", description = "Distributed locks, MESI-coherent cache and queues over Raft."),
    tags(
        (name = "probes", description = "Liveness, readiness, metrics and this document"),
        (name = "cluster", description = "Membership and Raft status"),
        (name = "kv", description = "Replicated key-value store in Raft group 0"),
        (name = "cache", description = "MESI-coherent cache with linearizable reads from local lines"),
        (name = "locks", description = "Shared/exclusive locks with fencing tokens, leases, FIFO queues and deadlock detection"),
        (name = "queues", description = "At-least-once queues, partitioned on a consistent-hash ring, each partition its own Raft group"),
    )
)]
struct ApiDoc;

/// Adds to every operation the error answers any request can get, whatever its path: a
/// malformed body or parameter, a slow or oversized request, a wait cap, no quorum.
struct CommonErrors;

impl utoipa::Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let common: [(&str, &str); 11] = [
            ("400", "invalid_argument: a malformed body, parameter or path"),
            ("401", "unauthenticated: no or an unknown bearer token (when AUTH_TOKENS_FILE is set)"),
            ("403", "permission_denied: the token's role does not allow this request"),
            ("404", "not_found"),
            ("409", "conflict: a request_id already used for another request"),
            ("408", "request_timeout: the body did not arrive in time"),
            ("413", "payload_too_large: the body, a key or a value is above its limit"),
            ("414", "uri_too_long"),
            ("429", "limit_exceeded: a cap was reached; retry after Retry-After"),
            ("431", "headers_too_large"),
            ("503", "no_quorum or unavailable; retry after Retry-After"),
        ];
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in common {
                    operation.responses.responses.entry(status.to_string()).or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(description)
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                                    .build(),
                            )
                            .build()
                            .into()
                    });
                }
            }
        }
    }
}

static OPENAPI_JSON: OnceLock<serde_json::Value> = OnceLock::new();

/// The OpenAPI document and the routes it describes.
fn documented_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let public = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(cluster::health))
        .routes(routes!(cluster::ready))
        .routes(routes!(cluster::metrics_text))
        .routes(routes!(openapi_json))
        .routes(routes!(cluster::cluster_status))
        .routes(routes!(overview::nodes))
        .routes(routes!(overview::queues))
        .routes(routes!(snapshot::group0))
        .routes(routes!(snapshot::partition))
        .routes(routes!(cluster::add_member))
        .routes(routes!(cluster::remove_member))
        .routes(routes!(kv::kv_get, kv::kv_put, kv::kv_delete))
        .routes(routes!(watch::watch))
        .routes(routes!(locks::acquire))
        .routes(routes!(locks::release))
        .routes(routes!(locks::refresh))
        .routes(routes!(locks::refresh_all))
        .routes(routes!(locks::force_release))
        .routes(routes!(locks::get_lock))
        .routes(routes!(locks::list_locks))
        .routes(routes!(locks::wait_for_graph))
        .routes(routes!(cache::get, cache::put, cache::delete))
        .routes(routes!(cache::local_line))
        .routes(routes!(cache::lines))
        .routes(routes!(cache::stats))
        .routes(routes!(queues::send))
        .routes(routes!(queues::send_batch))
        .routes(routes!(queues::receive))
        .routes(routes!(queues::ack))
        .routes(routes!(queues::nack))
        .routes(routes!(queues::stats))
        .routes(routes!(queues::ring))
        .layer(DefaultBodyLimit::max(PUBLIC_BODY_MAX_BYTES));
    // Node-to-node calls and fault injection are not the public API: routed, not documented.
    let internal = OpenApiRouter::<AppState>::new()
        .routes(routes!(cluster::isolate))
        .routes(routes!(raft::batch))
        .routes(routes!(raft::append))
        .routes(routes!(raft::vote))
        .routes(routes!(raft::snapshot))
        .routes(routes!(raft::write))
        .routes(routes!(raft::read_index))
        .routes(routes!(raft::applied))
        .routes(routes!(raft::cache_lease))
        .routes(routes!(raft::queue))
        .layer(DefaultBodyLimit::max(RAFT_BODY_MAX_BYTES));
    let (internal, _) = internal.split_for_parts();
    let (public, mut doc) = public.split_for_parts();
    utoipa::Modify::modify(&CommonErrors, &mut doc);
    (public.merge(internal), doc)
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().1
}

/// The complete router of a node.
pub fn router(node: AppState) -> Router {
    let (routes, doc) = documented_routes();
    let _ = OPENAPI_JSON.set(serde_json::to_value(&doc).unwrap_or_default());
    routes
        .merge(ui::routes())
        .fallback(|| async { NodeError::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            NodeError::MethodNotAllowed("this endpoint does not accept that method".into())
        })
        .layer(middleware::from_fn(refuse_peers_while_isolated))
        .layer(middleware::from_fn(crate::security::guard::authorize))
        .layer(middleware::from_fn(track_http))
        .layer(axum::Extension(node.security.clone()))
        .layer(axum::Extension(node.peers.isolation.clone()))
        .layer(axum::Extension(node.peers.refusals.clone()))
        .with_state(node)
}

/// The OpenAPI 3 document describing every endpoint.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "OpenAPI document", body = Object)))]
async fn openapi_json() -> Response {
    match OPENAPI_JSON.get() {
        Some(doc) => Json(doc.clone()).into_response(),
        None => Json(serde_json::to_value(openapi()).unwrap_or_default()).into_response(),
    }
}

/// Fault injection: an isolated node refuses every node-to-node request.
async fn refuse_peers_while_isolated(req: Request, next: Next) -> Response {
    let isolated = req.extensions().get::<crate::network::Isolation>().is_some_and(|i| i.is_set());
    if isolated && req.uri().path().starts_with("/raft/") {
        return NodeError::Unavailable("isolated by fault injection".into()).into_response();
    }
    next.run(req).await
}

/// The group and call of a Raft replication path (`/raft/{group}/append`, `vote`,
/// `snapshot`): the calls whose refusal means a group cannot replicate.
fn raft_call_of(path: &str) -> Option<(crate::types::GroupId, &'static str)> {
    let rest = path.strip_prefix("/raft/")?;
    let (group, rpc) = rest.split_once('/')?;
    let rpc = ["append", "vote", "snapshot"].into_iter().find(|known| *known == rpc)?;
    Some((group.parse().ok()?, rpc))
}

/// Counts every request by route, method and status, and times it.
async fn track_http(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = crate::metrics::method_label(req.method());
    let refusals = req.extensions().get::<crate::network::PeerRefusals>().cloned();
    let raft_call = raft_call_of(req.uri().path());
    let response = next.run(req).await;
    let status = response.status();
    if let (Some(refusals), Some((group, rpc))) = (refusals, raft_call) {
        if status.is_client_error() && status != axum::http::StatusCode::NOT_FOUND {
            refusals.record(group, "a caller", crate::network::Direction::ByUs, rpc, status.as_u16());
        }
    }
    crate::metrics::record_http(route, method, response.status().as_u16(), started.elapsed());
    response
}
