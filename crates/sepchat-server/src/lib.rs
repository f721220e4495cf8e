//! # sepchat-server: the App over loopback HTTP
//!
//! The browser UI's backend. Every [`App`] method is one route, `POST /rpc/<method>`, named exactly as the method
//! (the table is in `rpc.rs`): the body is the method's request type, or a JSON object of its arguments by name;
//! the answer is the method's return value as JSON, or an [`ApiError`](sepchat_core::api::ApiError)
//! `{"code", "message"}` with a fitting status. The generating methods (`send_message`, `regenerate`,
//! `edit_message`, `complete`) answer as server-sent events: each `ChatEvent` as one `data:` line, then one
//! `event: result` with the return value, or one `event: error` with an `ApiError` (an error before anything was
//! generated is a plain JSON error instead, with its status). `GET /api/health` tells whether a model is loaded.
//! Everything else is the built UI (`ui/dist`), or a page saying it is not built.
//!
//! Whoever can reach the port can read and write the history, so the server only listens on 127.0.0.1 and
//! refuses what a web page elsewhere could send it (`guard.rs`): a Host that is not loopback (DNS rebinding), an
//! Origin other than its own, a POST body that is not JSON (a cross-site form or `no-cors` fetch cannot send one
//! without a preflight) or is over the size limit. Generations are bounded: past [`ServerConfig::max_generations`]
//! running or waiting, a new one is answered `503 busy` at once. A client that closes an event stream stops its
//! generation, so an abandoned tab does not keep the engine busy.
//!
//! With [`ServerConfig::api`] set, the same server also answers OpenAI's `/v1/models` and `/v1/chat/completions`
//! (`openai.rs`) for existing clients, behind a bearer token; without it those routes do not exist.
//!
//! Request bodies are bounded at [`ServerConfig::body_limit`], except uploads (`import_document`, a whole JSON
//! export), which get [`ServerConfig::upload_body_limit`]. [`Server::run`] shuts down gracefully: it stops
//! accepting, stops the generations in progress through the App (their replies are stored `stopped`), and waits up
//! to [`SHUTDOWN_GRACE`] for them to be stored.

mod error;
mod guard;
mod openai;
mod rpc;
mod stream;
mod ui;

use std::future::{Future, IntoFuture};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use sepchat_core::App;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower_http::limit::RequestBodyLimitLayer;

pub use guard::CONTENT_SECURITY_POLICY;
pub use openai::{ApiToken, ApiTokenError, MIN_API_TOKEN_CHARS};
pub use rpc::METHODS;

/// The port tried first when none is asked for: a fixed one keeps the UI's origin (and so its local settings)
/// stable from one start to the next; when it is taken (a second instance), the OS picks a free one.
pub const DEFAULT_PORT: u16 = 7341;

/// The largest request body: requests are small JSON objects (a message, settings, a path).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// The largest upload (`import_document`: the text of a JSON export, which holds whole conversations with their
/// stats). Big enough for years of history; still a bound, so a runaway client cannot exhaust memory.
pub const DEFAULT_UPLOAD_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// How long a shutdown waits for stopped generations to be stored and open responses to end. A stopped reply is
/// stored within a decode step or a prefill chunk; a reply still `streaming` past this is marked `interrupted` on the
/// next start, its text kept.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Generations running or waiting at once. The engine runs one at a time and queues the rest, so this bounds
/// how long a request can wait; past it the answer is `busy` at once.
pub const DEFAULT_MAX_GENERATIONS: usize = 8;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `None`: [`DEFAULT_PORT`], or any free port when it is taken. `Some(0)`: any free port.
    pub port: Option<u16>,
    /// The built UI (a folder with `index.html`); absent or missing: `/` says the UI is not built.
    pub ui_dir: Option<PathBuf>,
    pub body_limit: usize,
    /// The body limit of uploads (`import_document`).
    pub upload_body_limit: usize,
    pub max_generations: usize,
    /// The OpenAI-compatible API under `/v1`, answering requests that carry this bearer token. `None` (the
    /// default): off, and `/v1` does not exist.
    pub api: Option<ApiToken>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: None,
            ui_dir: None,
            body_limit: DEFAULT_BODY_LIMIT,
            upload_body_limit: DEFAULT_UPLOAD_BODY_LIMIT,
            max_generations: DEFAULT_MAX_GENERATIONS,
            api: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the server stopped: {0}")]
    Serve(#[source] io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub app: App,
    /// One permit per generation running or waiting.
    pub generations: Arc<Semaphore>,
    /// Turns `true` when the server starts shutting down: generations stop and no new one starts.
    pub closing: watch::Receiver<bool>,
}

/// A server bound to its port, not yet answering (so the caller can print the URL first).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    closing: watch::Sender<bool>,
    generations: Arc<Semaphore>,
    max_generations: usize,
}

impl Server {
    /// Binds 127.0.0.1 (never another interface) and builds the routes for that port.
    pub async fn bind(app: App, config: ServerConfig) -> Result<Server, ServerError> {
        let listener = match config.port {
            Some(port) => listen(port).await?,
            None => match listen(DEFAULT_PORT).await {
                Ok(listener) => listener,
                Err(ServerError::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
                    tracing::info!(port = DEFAULT_PORT, "the default port is taken; letting the OS pick one");
                    listen(0).await?
                }
                Err(error) => return Err(error),
            },
        };
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: loopback(0), source })?;
        let generations = Arc::new(Semaphore::new(config.max_generations));
        let (closing, closing_receiver) = watch::channel(false);
        let state = AppState { app, generations: generations.clone(), closing: closing_receiver };
        let (requests, uploads) = rpc::routers(state.clone());
        let mut requests = requests.merge(ui::router(config.ui_dir.as_deref()));
        if let Some(token) = config.api {
            requests = requests.merge(openai::router(state, token));
        }
        // A declared length over the limit is refused before any of the body is read; a chunked body is cut off at
        // the limit while it is read. axum's own default limit (2 MB) would cut uploads short, so they raise it.
        let routes = requests.layer(RequestBodyLimitLayer::new(config.body_limit)).merge(
            uploads
                .layer(DefaultBodyLimit::max(config.upload_body_limit))
                .layer(RequestBodyLimitLayer::new(config.upload_body_limit)),
        );
        let router = guard::protect(routes, addr.port());
        let max_generations = config.max_generations;
        Ok(Server { listener, addr, router, closing, generations, max_generations })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UI's address, e.g. `http://127.0.0.1:7341/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Answers requests until `shutdown` completes, then shuts down gracefully: no new connection or generation is
    /// accepted, the generations in progress are stopped through the App (a reply is stored `stopped` with its text),
    /// and the open responses (their event streams end with their generations) and the stores are waited for, up to
    /// [`SHUTDOWN_GRACE`] in all. Past it, what is left is dropped with a warning.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Server { listener, router, closing, generations, max_generations, .. } = self;
        let mut closed = closing.subscribe();
        let serve = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // The sender lives until `run` returns, so this only completes on a shutdown.
                let _ = closed.wait_for(|closing| *closing).await;
            })
            .into_future();
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => return result.map_err(ServerError::Serve),
            () = shutdown => {}
        }
        tracing::info!("shutting down: stopping the generations in progress");
        closing.send_replace(true);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        match tokio::time::timeout_at(deadline, &mut serve).await {
            Ok(result) => result.map_err(ServerError::Serve)?,
            Err(_) => tracing::warn!(grace = ?SHUTDOWN_GRACE, "responses still open at the end of the shutdown grace"),
        }
        // A generation whose client already left has no response to wait for, but it is stored only when its task
        // ends, which returns its permit: all permits back means every generation is stored.
        let all = u32::try_from(max_generations).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(deadline, generations.acquire_many(all)).await {
            Ok(_) => tracing::info!("every generation is stored"),
            Err(_) => {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "generations still running at the end of the shutdown grace")
            }
        }
        Ok(())
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn listen(port: u16) -> Result<TcpListener, ServerError> {
    let addr = loopback(port);
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}
