//! Errors as HTTP answers: an [`ApiError`] body with the status its code calls for.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sepchat_core::api::{ApiError, ErrorCode};

/// An error answer: the App's `{code, message}` and a status.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub error: ApiError,
}

impl Failure {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure { status, error: ApiError { code, message: message.into() } }
    }

    /// Too many generations running or waiting: the client should try again shortly.
    pub fn queue_full() -> Failure {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            "too many replies are being generated or waiting; try again shortly",
        )
    }

    /// The server is shutting down: it starts nothing new.
    pub fn closing() -> Failure {
        Failure::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Busy, "the server is shutting down")
    }
}

/// The status for each stable code. `busy` from the App (this conversation, or the one raw completion, is already
/// generating) is a conflict with what runs; the server's own full queue is 503 ([`Failure::queue_full`]).
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorCode::Busy => StatusCode::CONFLICT,
        // No model loaded (or it cannot be loaded): nothing can be generated until one is.
        ErrorCode::Model => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Storage | ErrorCode::Engine | ErrorCode::Io | ErrorCode::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure { status: status_of(error.code), error }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let busy = self.error.code == ErrorCode::Busy;
        let mut response = (self.status, Json(self.error)).into_response();
        if busy {
            // A generation of a few hundred tokens takes seconds: a sooner retry would be refused again.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON body, with the extractor's refusals (malformed JSON, a missing field, a body over the limit) answered
/// as `{code, message}` like every other error rather than as plain text.
pub(crate) struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(Failure::new(rejection.status(), ErrorCode::InvalidInput, rejection.body_text())),
        }
    }
}
