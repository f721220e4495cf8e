//! The generating methods as server-sent events. A generation takes a queue permit (none left: `503 busy` at
//! once), runs as its own task, and sends each `ChatEvent` as a `data:` line, then `event: result` (the method's
//! return value) or `event: error` (an `ApiError`). An error before the first event (busy conversation, unknown
//! id, empty text, no model) is answered as a plain JSON error with its status instead, so a client can tell a
//! refused request from a failed reply. When the client goes away before the end, the stream is dropped and the
//! generation stopped: the reply is stored as `stopped` with the text it had.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use sepchat_core::api::{ApiError, ChatEvent, ErrorCode};
use sepchat_core::App;
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::Failure;
use crate::AppState;

/// How often an idle stream sends a comment. It keeps proxies from timing out during a long prompt and, more to
/// the point, makes a closed connection show up (as a failed write) even before the first token.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// What a disconnect stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Conversation(i64),
    Completion,
}

/// One message to the client: an event of the generation, or its end.
enum Item {
    Event(Event),
    End(Result<Event, ApiError>),
}

/// A generation's event sink, as the App's methods take it.
pub(crate) type EventSink = Box<dyn Fn(ChatEvent) + Send + Sync>;

/// Starts `run` (one App method with its request) as a streamed generation.
pub(crate) async fn generate<T, F, Fut>(state: &AppState, target: Target, run: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(App, EventSink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let Ok(permit) = state.generations.clone().try_acquire_owned() else {
        return Failure::queue_full().into_response();
    };
    let (sender, mut items) = unbounded_channel();
    let finished = Arc::new(AtomicBool::new(false));
    // Made before the first await: if the client leaves while the request waits for its first event, dropping
    // this handler's future stops the generation too.
    let guard = StopOnDrop { app: state.app.clone(), target, finished: finished.clone() };
    let events = sender.clone();
    let sink: EventSink = Box::new(move |event: ChatEvent| {
        // A send fails only when the client is gone; the generation is being stopped then.
        let _ = events.send(Item::Event(json_event(Event::default(), &event)));
    });
    let app = state.app.clone();
    tokio::spawn(async move {
        // Held until the App's call returns, so a stopped-but-not-yet-ended generation still counts.
        let _permit = permit;
        let outcome = run(app, sink).await;
        finished.store(true, Ordering::Release);
        let end = outcome.map(|value| json_event(Event::default().event("result"), &value));
        let _ = sender.send(Item::End(end));
    });
    match items.recv().await {
        Some(Item::End(Err(error))) => Failure::from(error).into_response(),
        Some(first) => {
            let stream = EventStream { first: Some(first), items, _guard: guard };
            Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
        }
        None => Failure::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the generation ended without an answer",
        )
        .into_response(),
    }
}

/// `data:` is the value as JSON. Serializing the API's types cannot fail (string keys only); if it ever did, the
/// client gets an error event rather than a silently missing event.
fn json_event(event: Event, value: &impl Serialize) -> Event {
    match serde_json::to_string(value) {
        Ok(json) => event.data(json),
        Err(error) => error_event(&ApiError { code: ErrorCode::Internal, message: error.to_string() }),
    }
}

fn error_event(error: &ApiError) -> Event {
    let json = serde_json::to_string(error).unwrap_or_else(|_| r#"{"code":"internal","message":""}"#.to_string());
    Event::default().event("error").data(json)
}

/// The response body: the events as they come. Dropped when the response ends or the connection closes.
struct EventStream {
    first: Option<Item>,
    items: UnboundedReceiver<Item>,
    _guard: StopOnDrop,
}

impl Stream for EventStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = match self.first.take() {
            Some(item) => Some(item),
            None => match self.items.poll_recv(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(item.map(|item| {
            Ok(match item {
                Item::Event(event) | Item::End(Ok(event)) => event,
                Item::End(Err(error)) => error_event(&error),
            })
        }))
    }
}

/// Stops the generation when dropped before it finished: the client closed the stream (or never waited for it).
struct StopOnDrop {
    app: App,
    target: Target,
    finished: Arc<AtomicBool>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let stopped = match self.target {
            Target::Conversation(id) => self.app.stop(id),
            Target::Completion => self.app.stop_completion(),
        };
        tracing::info!(target = ?self.target, stopped, "the client left a generation; stopping it");
    }
}
