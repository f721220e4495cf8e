//! What keeps other web pages out. Listening on loopback is not enough: any page the user opens can make the
//! browser send requests to 127.0.0.1, and a DNS name rebound to 127.0.0.1 makes them same-origin to that page.
//! So every request must name this server in `Host` (a rebound name does not match), an `Origin` header, when
//! present, must be this server's own, and a POST must be `application/json` (which a cross-site page can only
//! send after a CORS preflight, which this server never grants). Every response carries a strict CSP. The
//! OpenAI-compatible routes under `/v1` pass the same checks: their clients are programs, which send no `Origin`
//! and send JSON anyway, while a web page elsewhere is refused there as everywhere.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sepchat_core::api::ErrorCode;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::error::Failure;
use crate::openai::{self, OpenAiError};

/// Only this server's own files: no remote scripts, styles, images, fonts or connections, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The names a browser on this machine uses for this server.
struct Policy {
    hosts: [String; 3],
}

impl Policy {
    fn new(port: u16) -> Policy {
        Policy { hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("[::1]:{port}")] }
    }

    /// The request's `Host`, lowercased, when it is one of ours.
    fn host<'a>(&'a self, headers: &HeaderMap) -> Option<&'a str> {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        self.hosts.iter().find(|ours| ours.eq_ignore_ascii_case(host)).map(String::as_str)
    }
}

/// The routes behind the checks, with the security headers on every answer (refusals included). Body limits are
/// the routes' own (`Server::bind`): uploads get a larger one.
pub(crate) fn protect(routes: Router, port: u16) -> Router {
    let policy = Arc::new(Policy::new(port));
    let header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    routes.layer(
        ServiceBuilder::new()
            .layer(header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .layer(header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .layer(header(header::REFERRER_POLICY, "no-referrer"))
            .layer(header(header::X_FRAME_OPTIONS, "DENY"))
            .layer(header(HeaderName::from_static("cross-origin-opener-policy"), "same-origin"))
            .layer(header(HeaderName::from_static("cross-origin-resource-policy"), "same-origin"))
            .layer(middleware::from_fn_with_state(policy, check)),
    )
}

async fn check(State(policy): State<Arc<Policy>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let path = request.uri().path();
    let Some(host) = policy.host(headers) else {
        let named = headers.get(header::HOST).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        tracing::warn!(host = ?named, "refused a request for another host (DNS rebinding?)");
        return refuse(
            path,
            StatusCode::MISDIRECTED_REQUEST,
            "this server only answers to 127.0.0.1, localhost and [::1]",
        );
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        // Same origin: the scheme is always http, and the host and port are those the request was sent to.
        let own = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.strip_prefix("http://"))
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host));
        if !own {
            tracing::warn!(origin = ?origin, "refused a request from another origin");
            return refuse(path, StatusCode::FORBIDDEN, "requests from other origins are refused");
        }
    }
    if ![Method::GET, Method::HEAD].contains(request.method()) && !is_json(headers) {
        return refuse(path, StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json");
    }
    next.run(request).await
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A refusal in the format the path's clients read: OpenAI's under `/v1`, the App's `{code, message}` elsewhere.
fn refuse(path: &str, status: StatusCode, message: &str) -> Response {
    if openai::is_api_path(path) {
        OpenAiError::new(status, message).into_response()
    } else {
        Failure::new(status, ErrorCode::InvalidInput, message).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_with_our_port_are_ours() {
        let policy = Policy::new(8080);
        let host = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(value));
            policy.host(&headers).map(str::to_owned)
        };
        assert_eq!(host("127.0.0.1:8080").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(host("LOCALHOST:8080").as_deref(), Some("localhost:8080"));
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]:8080"));
        for refused in ["evil.example", "evil.example:8080", "127.0.0.1", "127.0.0.1:8081", "localhost.evil:8080"] {
            assert_eq!(host(refused), None, "{refused}");
        }
    }

    #[test]
    fn json_content_types() {
        let json = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json(&headers)
        };
        assert!(json("application/json"));
        assert!(json("Application/JSON; charset=utf-8"));
        assert!(!json("text/plain"));
        assert!(!json("application/x-www-form-urlencoded"));
        assert!(!json("application/jsonp"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
