//! The one place where the node's errors ([`crate::error::NodeError`]) become HTTP: status,
//! stable `error` code, message and `Retry-After`; and the extractors whose rejections are
//! such errors.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::limits::{json_depth_within, JSON_DEPTH_MAX};
use sinkron_core::locks::{HolderView, WaitEdge};

pub use crate::error::NodeError;
use utoipa::ToSchema;

/// Seconds a client is asked to wait before retrying a `503`.
const RETRY_AFTER_SECONDS: &str = "1";

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, such as `invalid_argument` or `no_quorum`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// With `deadlock`: the cycle, each edge `{client_id, lock, waits_for}`, starting at the
    /// rejected requester.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub cycle: Option<Vec<WaitEdge>>,
    /// With `lock_conflict`: the current holders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub holders: Option<Vec<HolderView>>,
    /// With `version_mismatch`: the key's current version (0: it does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// With `stale_fence`: the lock's current fence (absent when nobody holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_fence: Option<u64>,
    /// With `compacted`: the oldest version a watch may resume from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_version: Option<u64>,
}

impl NodeError {
    /// The HTTP status and stable code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::LockConflict(_) => (StatusCode::CONFLICT, "lock_conflict"),
            Self::WaitTimeout(_) => (StatusCode::CONFLICT, "wait_timeout"),
            Self::Deadlock(_) => (StatusCode::CONFLICT, "deadlock"),
            Self::NotOwner(_) => (StatusCode::FORBIDDEN, "not_owner"),
            Self::NotHeld(_) => (StatusCode::NOT_FOUND, "not_held"),
            Self::LimitExceeded(_) => (StatusCode::TOO_MANY_REQUESTS, "limit_exceeded"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::UriTooLong(_) => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            Self::HeadersTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"),
            Self::QuotaExceeded(_) => (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::VersionMismatch(..) => (StatusCode::CONFLICT, "version_mismatch"),
            Self::StaleFence(..) => (StatusCode::CONFLICT, "stale_fence"),
            Self::Compacted(..) => (StatusCode::GONE, "compacted"),
            Self::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
        }
    }
}

impl NodeError {
    /// The whole HTTP/1.1 answer for this error on a connection that closes after it, for
    /// the connection guard, which answers before any router sees a request.
    pub fn to_http1(&self) -> Vec<u8> {
        let status = self.status_and_code().0;
        let body = serde_json::to_string(&self.body()).unwrap_or_default();
        let retry_after = if retries_later(status) {
            format!("retry-after: {RETRY_AFTER_SECONDS}\r\n")
        } else {
            String::new()
        };
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry_after}connection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    }

    /// The JSON body of this error.
    fn body(&self) -> ErrorBody {
        let (cycle, holders) = match self {
            Self::Deadlock(cycle) => (Some(cycle.clone()), None),
            Self::LockConflict(holders) => (None, Some(holders.clone())),
            _ => (None, None),
        };
        ErrorBody {
            error: self.status_and_code().1.to_string(),
            message: self.to_string(),
            cycle,
            holders,
            current_version: match self {
                Self::VersionMismatch(_, current) => Some(*current),
                _ => None,
            },
            current_fence: match self {
                Self::StaleFence(_, current) => *current,
                _ => None,
            },
            oldest_version: match self {
                Self::Compacted(_, oldest) => Some(*oldest),
                _ => None,
            },
        }
    }
}

/// Whether an answer with `status` tells the client when to retry (`Retry-After`).
fn retries_later(status: StatusCode) -> bool {
    matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS)
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        let status = self.status_and_code().0;
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if retries_later(status) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"sinkron\""));
        }
        // The body of a request refused for its size or slowness may be partly unread: the
        // connection cannot carry another request, and clients and load balancers must not
        // put it back into their pools.
        if matches!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::URI_TOO_LONG
                | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON body whose rejections are [`NodeError`]s: malformed JSON and wrong types become
/// `400 invalid_argument` naming the field, bodies nested deeper than `DEPTH` levels
/// `400 invalid_argument` as well, oversized bodies `413 payload_too_large`, a body that
/// does not arrive within the node's body timeout `408 request_timeout`.
///
/// Public endpoints use the default depth, [`JSON_DEPTH_MAX`]; node-to-node calls use
/// [`PEER_JSON_DEPTH`], since they wrap client values in a few levels of their own.
pub struct ApiJson<T, const DEPTH: usize = JSON_DEPTH_MAX>(pub T);

/// Depth allowed in node-to-node bodies: serde_json's own recursion limit.
pub const PEER_JSON_DEPTH: usize = 128;

/// How long a request's body may take to arrive, set once at start-up from the node's
/// configuration (tests and tools that build a router alone get the default).
pub static BODY_TIMEOUT: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

/// Default of [`BODY_TIMEOUT`].
pub const BODY_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);

impl<S, T, const DEPTH: usize> FromRequest<S> for ApiJson<T, DEPTH>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = NodeError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(NodeError::InvalidArgument(
                "send the body as JSON with content-type: application/json".into(),
            ));
        }
        let within = *BODY_TIMEOUT.get().unwrap_or(&BODY_TIMEOUT_DEFAULT);
        let bytes = match tokio::time::timeout(within, Bytes::from_request(req, state)).await {
            Err(_) => {
                return Err(NodeError::RequestTimeout(format!(
                    "the request body did not arrive within {} ms",
                    within.as_millis()
                )))
            }
            Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(NodeError::PayloadTooLarge("request body is larger than the limit".into()))
            }
            Ok(Err(rejection)) => return Err(NodeError::InvalidArgument(rejection.body_text())),
            Ok(Ok(bytes)) => bytes,
        };
        if json_depth_within(&bytes, DEPTH).is_none() {
            return Err(NodeError::InvalidArgument(format!(
                "body: JSON nested deeper than {DEPTH} levels (arrays and objects, the body's own included)"
            )));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(from_json_rejection(rejection)),
        }
    }
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A path parameter whose rejection is `400 invalid_argument`.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = NodeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(NodeError::InvalidArgument(format!("path: {}", rejection.body_text()))),
        }
    }
}

/// A query string whose rejection is `400 invalid_argument` naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = NodeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(NodeError::InvalidArgument(format!(
                "query: {}",
                rejection.body_text().trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}

/// The error of a body that `Json::from_bytes` refused (size and content type are checked
/// before, in [`ApiJson`]).
fn from_json_rejection(rejection: JsonRejection) -> NodeError {
    match rejection {
        JsonRejection::JsonDataError(e) => NodeError::InvalidArgument(format!(
            "body: {}",
            e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        )),
        JsonRejection::JsonSyntaxError(e) => NodeError::InvalidArgument(format!(
            "body is not valid JSON: {}",
            e.body_text().trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        other => NodeError::InvalidArgument(other.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_and_code() {
        let table = [
            (NodeError::InvalidArgument("x".into()), 400, "invalid_argument"),
            (NodeError::NotFound("x".into()), 404, "not_found"),
            (NodeError::Conflict("x".into()), 409, "conflict"),
            (NodeError::PayloadTooLarge("x".into()), 413, "payload_too_large"),
            (NodeError::NoQuorum("x".into()), 503, "no_quorum"),
            (NodeError::Unavailable("x".into()), 503, "unavailable"),
            (NodeError::MethodNotAllowed("x".into()), 405, "method_not_allowed"),
            (NodeError::LockConflict(vec![]), 409, "lock_conflict"),
            (NodeError::WaitTimeout("x".into()), 409, "wait_timeout"),
            (NodeError::Deadlock(vec![]), 409, "deadlock"),
            (NodeError::NotOwner("x".into()), 403, "not_owner"),
            (NodeError::NotHeld("x".into()), 404, "not_held"),
            (NodeError::LimitExceeded("x".into()), 429, "limit_exceeded"),
            (NodeError::RequestTimeout("x".into()), 408, "request_timeout"),
            (NodeError::UriTooLong("x".into()), 414, "uri_too_long"),
            (NodeError::HeadersTooLarge("x".into()), 431, "headers_too_large"),
            (NodeError::QuotaExceeded("x".into()), 507, "quota_exceeded"),
            (NodeError::Unauthenticated("x".into()), 401, "unauthenticated"),
            (NodeError::PermissionDenied("x".into()), 403, "permission_denied"),
            (NodeError::VersionMismatch("x".into(), 3), 409, "version_mismatch"),
            (NodeError::StaleFence("x".into(), Some(4)), 409, "stale_fence"),
            (NodeError::Compacted("x".into(), 9), 410, "compacted"),
        ];
        for (error, status, code) in table {
            assert_eq!(error.status_and_code(), (StatusCode::from_u16(status).expect("status"), code));
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers().contains_key(header::RETRY_AFTER), status == 503 || status == 429);
            assert_eq!(
                response.headers().contains_key(header::CONNECTION),
                [408, 413, 414, 431].contains(&status)
            );
            assert_eq!(response.headers().contains_key(header::WWW_AUTHENTICATE), status == 401);
        }
    }
}
