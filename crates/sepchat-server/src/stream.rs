//! The generating methods as server-sent events. A generation takes a queue permit (none left: `503 busy` at
//! once), runs as its own task, and sends each `ChatEvent` as a `data:` line, then `event: result` (the method's
//! return value) or `event: error` (an `ApiError`). An error before the first event (busy conversation, unknown
//! id, empty text, no model) is answered as a plain JSON error with its status instead, so a client can tell a
//! refused request from a failed reply. When the client goes away before the end, the stream is dropped and the
//! generation stopped: the reply is stored as `stopped` with the text it had.
//!
//! [`start`] is the part the OpenAI-compatible routes (`openai.rs`) share: the task, and what stops it. A stop
//! goes through the App (`stop` or `stop_completion`), which stops whatever holds that conversation (or the one
//! completion slot); so a generation is only stopped once the App has sent it an event, which proves the App
//! runs it. A client that leaves before that marks the generation abandoned, and its first event stops it.
//! When the server shuts down, every generation is abandoned the same way.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use sepchat_core::api::{ApiError, ChatEvent, ErrorCode};
use sepchat_core::App;
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::{watch, Mutex, OwnedSemaphorePermit};

use crate::error::Failure;
use crate::AppState;

/// How often an idle stream sends a comment. It keeps proxies from timing out during a long prompt and, more to
/// the point, makes a closed connection show up (as a failed write) even before the first token.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// What a stop stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Conversation(i64),
    Completion,
}

/// What a generation's task sends to the request that started it: the App's events in order, then its end.
pub(crate) enum Item<T> {
    Event(ChatEvent),
    End(Result<T, ApiError>),
}

/// A generation's event sink, as the App's methods take it.
pub(crate) type EventSink = Box<dyn Fn(ChatEvent) + Send + Sync>;

/// Why a generation was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// [`crate::ServerConfig::max_generations`] are running or waiting.
    QueueFull,
    /// The server is shutting down.
    Closing,
}

/// A queue permit for a new generation.
pub(crate) fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, Refused> {
    if *state.closing.borrow() {
        return Err(Refused::Closing);
    }
    state.generations.clone().try_acquire_owned().map_err(|_| Refused::QueueFull)
}

/// A generation started by [`start`]: what it sends, and the guard that stops it when the request goes away.
pub(crate) struct Running<T> {
    pub items: UnboundedReceiver<Item<T>>,
    pub guard: StopOnDrop,
}

/// Runs `run` (one App method with its request) as its own task, holding `permit` until the App's call returns
/// (so a stopped-but-not-yet-stored generation still counts). With a `queue`, the task first waits for its turn
/// there: generations that would otherwise be refused as busy by the App wait instead, in order.
pub(crate) fn start<T, F, Fut>(
    state: &AppState,
    target: Target,
    permit: OwnedSemaphorePermit,
    queue: Option<Arc<Mutex<()>>>,
    run: F,
) -> Running<T>
where
    T: Send + 'static,
    F: FnOnce(App, EventSink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let (sender, items) = unbounded_channel();
    let control = Arc::new(Control::new(state.app.clone(), target));
    let guard = StopOnDrop(control.clone());
    let events = sender.clone();
    let sink_control = control.clone();
    let sink: EventSink = Box::new(move |event: ChatEvent| {
        sink_control.on_event();
        // A send fails only when the client is gone; the generation is being stopped then.
        let _ = events.send(Item::Event(event));
    });
    let app = state.app.clone();
    let mut closing = state.closing.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let _turn = match queue {
            None => None,
            Some(queue) => tokio::select! {
                turn = queue.lock_owned() => Some(turn),
                () = control.until_abandoned() => {
                    control.finish();
                    let message = "stopped before it started: the client left or the server is shutting down";
                    let _ = sender.send(Item::End(Err(ApiError { code: ErrorCode::Busy, message: message.into() })));
                    return;
                }
                () = until_closing(&mut closing) => {
                    control.finish();
                    let message = "the server is shutting down";
                    let _ = sender.send(Item::End(Err(ApiError { code: ErrorCode::Busy, message: message.into() })));
                    return;
                }
            },
        };
        let run = run(app, sink);
        tokio::pin!(run);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = until_closing(&mut closing) => {
                control.abandon();
                run.await
            }
        };
        control.finish();
        let _ = sender.send(Item::End(outcome));
    });
    Running { items, guard }
}

/// Completes when the server starts shutting down; never when the server is gone without saying so.
async fn until_closing(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Starts `run` (one App method with its request) as a streamed generation.
pub(crate) async fn generate<T, F, Fut>(state: &AppState, target: Target, run: F) -> Response
where
    T: Serialize + Send + Unpin + 'static,
    F: FnOnce(App, EventSink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
{
    let permit = match admit(state) {
        Ok(permit) => permit,
        Err(Refused::QueueFull) => return Failure::queue_full().into_response(),
        Err(Refused::Closing) => return Failure::closing().into_response(),
    };
    // The guard exists before the first await: if the client leaves while the request waits for its first event,
    // dropping this handler's future drops it, which stops the generation as soon as the App runs it.
    let Running { mut items, guard } = start(state, target, permit, None, run);
    match items.recv().await {
        Some(Item::End(Err(error))) => Failure::from(error).into_response(),
        Some(first) => {
            let stream = EventStream { first: Some(first), items, _guard: guard };
            Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
        }
        None => Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
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
struct EventStream<T> {
    first: Option<Item<T>>,
    items: UnboundedReceiver<Item<T>>,
    _guard: StopOnDrop,
}

impl<T: Serialize + Unpin> Stream for EventStream<T> {
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
                Item::Event(event) => json_event(Event::default(), &event),
                Item::End(Ok(value)) => json_event(Event::default().event("result"), &value),
                Item::End(Err(error)) => error_event(&error),
            })
        }))
    }
}

/// Where a generation stands, shared by its task, its sink and the request that started it.
pub(crate) struct Control {
    app: App,
    target: Target,
    /// The App sent an event, so it holds this generation's claim: a stop now reaches this generation.
    started: AtomicBool,
    /// The client left (or the server is shutting down): stop as soon as the App runs it.
    abandoned: watch::Sender<bool>,
    /// The App's call returned: nothing is left to stop, and the target may already be someone else's.
    finished: AtomicBool,
    stop_sent: AtomicBool,
}

impl Control {
    fn new(app: App, target: Target) -> Control {
        Control {
            app,
            target,
            started: AtomicBool::new(false),
            abandoned: watch::Sender::new(false),
            finished: AtomicBool::new(false),
            stop_sent: AtomicBool::new(false),
        }
    }

    /// Called for every event, on the App's side. Together with [`Control::abandon`] (each writes its flag, then
    /// reads the other's), at least one of the two sees both flags set, so an abandoned generation is stopped
    /// however the two interleave.
    fn on_event(&self) {
        self.started.store(true, Ordering::SeqCst);
        if *self.abandoned.borrow() {
            self.stop();
        }
    }

    fn abandon(&self) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        self.abandoned.send_replace(true);
        if self.started.load(Ordering::SeqCst) {
            self.stop();
        }
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    async fn until_abandoned(&self) {
        let mut abandoned = self.abandoned.subscribe();
        // The sender lives in `self`, so this cannot fail while `self` is borrowed.
        let _ = abandoned.wait_for(|abandoned| *abandoned).await;
    }

    fn stop(&self) {
        if self.finished.load(Ordering::SeqCst) || self.stop_sent.swap(true, Ordering::SeqCst) {
            return;
        }
        let stopped = match self.target {
            Target::Conversation(id) => self.app.stop(id),
            Target::Completion => self.app.stop_completion(),
        };
        tracing::info!(target = ?self.target, stopped, "stopping an abandoned generation");
    }
}

/// Abandons the generation when dropped before it finished: the client closed the stream (or never waited for it).
pub(crate) struct StopOnDrop(Arc<Control>);

impl StopOnDrop {
    /// Stops the generation now (as soon as the App runs it), e.g. when the rest of its text is not wanted.
    pub(crate) fn abandon(&self) {
        self.0.abandon();
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop_sent(control: &Control) -> bool {
        control.stop_sent.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_generation_is_stopped_once_the_app_runs_it_and_never_after_it_ended() {
        let dir = tempfile::tempdir().expect("temp dir");
        let app = App::open(dir.path()).await.expect("open the app");

        // Left before its first event: the App may not hold its claim yet, so the stop waits for that event.
        let early = Control::new(app.clone(), Target::Conversation(7));
        early.abandon();
        assert!(!stop_sent(&early));
        early.on_event();
        assert!(stop_sent(&early));

        // Left while it runs: stopped at once.
        let running = Control::new(app.clone(), Target::Completion);
        running.on_event();
        assert!(!stop_sent(&running));
        running.abandon();
        assert!(stop_sent(&running));

        // Left after it ended: the target may be someone else's by now, so nothing is stopped.
        let ended = Control::new(app, Target::Completion);
        ended.on_event();
        ended.finish();
        ended.abandon();
        assert!(!stop_sent(&ended));
    }
}
