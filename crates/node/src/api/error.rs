//! The one place where errors become HTTP: status, stable `error` code and message.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sinkron_core::locks::{HolderView, LockMode, WaitEdge};
use sinkron_core::CoreError;
use utoipa::ToSchema;

/// Seconds a client is asked to wait before retrying a `503`.
const RETRY_AFTER_SECONDS: &str = "1";

/// An error answered to a client (also carried between nodes as JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The addressed object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state (e.g. a membership change in progress).
    #[error("{0}")]
    Conflict(String),
    /// A body, key or value is above its size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No leader with a live quorum answered within the bounded wait.
    #[error("{0}")]
    NoQuorum(String),
    /// The node cannot serve the request now (shutting down, storage failed).
    #[error("{0}")]
    Unavailable(String),
    /// The endpoint exists but not with this HTTP method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The lock is held incompatibly and the request did not wait.
    #[error("lock is held by {}", holder_names(.0))]
    LockConflict(Vec<HolderView>),
    /// The request waited `wait_ms` without being granted.
    #[error("{0}")]
    WaitTimeout(String),
    /// Waiting would have closed a cycle of waiters; this request is the victim.
    #[error("waiting would deadlock: {}", cycle_text(.0))]
    Deadlock(Vec<WaitEdge>),
    /// The lock is held, but not by this client.
    #[error("{0}")]
    NotOwner(String),
    /// Nobody holds the lock.
    #[error("{0}")]
    NotHeld(String),
    /// A limit (waiters per lock, locks per client) was reached.
    #[error("{0}")]
    LimitExceeded(String),
}

fn holder_names(holders: &[HolderView]) -> String {
    holders
        .iter()
        .map(|h| {
            let mode = match h.mode {
                LockMode::Shared => "shared",
                LockMode::Exclusive => "exclusive",
            };
            format!("{} ({mode}, fence {})", h.client_id, h.fence)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cycle_text(cycle: &[WaitEdge]) -> String {
    cycle
        .iter()
        .map(|e| format!("{} waits for {} on {}", e.client_id, e.waits_for, e.lock))
        .collect::<Vec<_>>()
        .join("; ")
}

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
}

impl ApiError {
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
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidArgument { .. } => Self::InvalidArgument(e.to_string()),
            CoreError::TooLarge { .. } => Self::PayloadTooLarge(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (cycle, holders) = match &self {
            Self::Deadlock(cycle) => (Some(cycle.clone()), None),
            Self::LockConflict(holders) => (None, Some(holders.clone())),
            _ => (None, None),
        };
        let body = ErrorBody { error: code.to_string(), message: self.to_string(), cycle, holders };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// A JSON body whose rejections are [`ApiError`]s: malformed JSON and wrong types become
/// `400 invalid_argument` naming the field, oversized bodies `413 payload_too_large`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(from_json_rejection(rejection)),
        }
    }
}

/// A path parameter whose rejection is `400 invalid_argument`.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::InvalidArgument(format!("path: {}", rejection.body_text()))),
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
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::InvalidArgument(format!(
                "query: {}",
                rejection.body_text().trim_start_matches("Failed to deserialize query string: ")
            ))),
        }
    }
}

fn from_json_rejection(rejection: JsonRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::PayloadTooLarge("request body is larger than the limit".into());
    }
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::InvalidArgument(format!(
            "body: {}",
            e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")
        )),
        JsonRejection::JsonSyntaxError(e) => ApiError::InvalidArgument(format!(
            "body is not valid JSON: {}",
            e.body_text().trim_start_matches("Failed to parse the request body as JSON: ")
        )),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::InvalidArgument("send the body as JSON with content-type: application/json".into())
        }
        other => ApiError::InvalidArgument(other.body_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_status_and_code() {
        let table = [
            (ApiError::InvalidArgument("x".into()), 400, "invalid_argument"),
            (ApiError::NotFound("x".into()), 404, "not_found"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::PayloadTooLarge("x".into()), 413, "payload_too_large"),
            (ApiError::NoQuorum("x".into()), 503, "no_quorum"),
            (ApiError::Unavailable("x".into()), 503, "unavailable"),
            (ApiError::MethodNotAllowed("x".into()), 405, "method_not_allowed"),
            (ApiError::LockConflict(vec![]), 409, "lock_conflict"),
            (ApiError::WaitTimeout("x".into()), 409, "wait_timeout"),
            (ApiError::Deadlock(vec![]), 409, "deadlock"),
            (ApiError::NotOwner("x".into()), 403, "not_owner"),
            (ApiError::NotHeld("x".into()), 404, "not_held"),
            (ApiError::LimitExceeded("x".into()), 429, "limit_exceeded"),
        ];
        for (error, status, code) in table {
            assert_eq!(error.status_and_code(), (StatusCode::from_u16(status).expect("status"), code));
            let response = error.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers().contains_key(header::RETRY_AFTER), status == 503);
        }
    }
}
