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

mod error;
mod guard;
mod rpc;
mod stream;
mod ui;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use sepchat_core::App;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use guard::CONTENT_SECURITY_POLICY;
pub use rpc::METHODS;

/// The port tried first when none is asked for: a fixed one keeps the UI's origin (and so its local settings)
/// stable from one start to the next; when it is taken (a second instance), the OS picks a free one.
pub const DEFAULT_PORT: u16 = 7341;

/// The largest request body: requests are small JSON objects (a message, settings, a path).
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

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
    pub max_generations: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            port: None,
            ui_dir: None,
            body_limit: DEFAULT_BODY_LIMIT,
            max_generations: DEFAULT_MAX_GENERATIONS,
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
}

/// A server bound to its port, not yet answering (so the caller can print the URL first).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
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
        let state = AppState { app, generations: Arc::new(Semaphore::new(config.max_generations)) };
        let routes = rpc::router(state).merge(ui::router(config.ui_dir.as_deref()));
        let router = guard::protect(routes, addr.port(), config.body_limit);
        Ok(Server { listener, addr, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The UI's address, e.g. `http://127.0.0.1:7341/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Answers requests until `shutdown` completes. Open event streams are not waited for: their generations go
    /// on in the App (a reply still finishes and is stored) while the process lives.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let serve = axum::serve(self.listener, self.router);
        tokio::select! {
            result = serve => result.map_err(ServerError::Serve),
            () = shutdown => Ok(()),
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

async fn listen(port: u16) -> Result<TcpListener, ServerError> {
    let addr = loopback(port);
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}
