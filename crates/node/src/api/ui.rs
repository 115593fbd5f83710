//! The dashboard at `/ui`: one page, its script and its style, compiled into the binary,
//! so it works offline and needs nothing but the node.
//!
//! The page only calls the public JSON API (with the bearer token the user gives it), so it
//! knows nothing other clients cannot learn. It is not part of the OpenAPI document. Every
//! answer carries a content security policy that allows this node's own script, style and
//! API calls only: even a name that slipped past the page's text-only rendering could not
//! run a script.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX_HTML: &str = include_str!("../../assets/ui/index.html");
const APP_JS: &str = include_str!("../../assets/ui/app.js");
const APP_CSS: &str = include_str!("../../assets/ui/app.css");

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the dashboard.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route("/ui/", get(|| asset("text/html; charset=utf-8", INDEX_HTML)))
        .route("/ui/app.js", get(|| asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/ui/app.css", get(|| asset("text/css; charset=utf-8", APP_CSS)))
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}
