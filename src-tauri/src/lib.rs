//! # sepchat-desktop: the App in a Tauri 2 window
//!
//! The desktop face, beside the CLI and the local server, over the same [`App`]. Every command is one App method
//! with the name of the method and of the server's route (`POST /rpc/<method>`), taking the JSON object that route
//! takes as its body, so the UI's Tauri transport can `invoke(method, body)` with the body it would POST. The
//! generating methods stream their `ChatEvent`s over a `tauri::ipc::Channel` passed as `on_event`, and resolve with
//! the method's result; errors are the App's `{code, message}`. App-wide notices (a model loaded or failed, the
//! conversation list changed) are events, see [`events`].
//!
//! At start the shell opens the App on the data directory (`SEPCHAT_DATA_DIR`, else Tauri's app data directory,
//! which for the identifier `sepchat` is the same folder the CLI and the server use), opens the window, and loads
//! the default model behind it (fetched beforehand by `sepchat fetch-model`); the window learns the outcome from
//! `model-loaded` / `model-error`, or from `health` if it asks first.
//!
//! What the window may do is fixed at build time: a strict content security policy and one capability
//! (tauri.conf.json, capabilities/main.json; tests/security.rs lints both), no shell or file-system plugin, and a
//! navigation guard that keeps the window on the app and opens outside http(s) links in the system browser.

mod body;
pub mod commands;
pub mod events;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sepchat_core::api::{ApiError, LoadModelRequest, ModelInfo};
use sepchat_core::App;
use tauri::webview::NewWindowResponse;
use tauri::{AppHandle, Manager, Url, WebviewWindowBuilder};
use tauri_plugin_opener::OpenerExt;

use crate::commands::Health;

/// The label of the one window (tauri.conf.json; the capability names it).
pub const MAIN_WINDOW: &str = "main";

/// The environment variable that overrides the data directory (the same one the CLI and the server read).
pub const DATA_DIR_ENV: &str = "SEPCHAT_DATA_DIR";

/// The folder, under the data directory, where the webview keeps its own storage (local storage, caches), so it
/// stays apart from the history database and the KV snapshots.
pub const WEBVIEW_DATA_DIR_NAME: &str = "webview";

/// Every command name and the invoke handler, from the one list in command_list.rs.
macro_rules! desktop_commands {
    ($($command:ident),* $(,)?) => {
        /// Every command the window can invoke (each still needs its `allow-<command>` in the capability), in
        /// order: `health`, then the server's route table.
        pub const COMMANDS: &[&str] = &[$(stringify!($command)),*];

        fn invoke_handler() -> impl Fn(tauri::ipc::Invoke) -> bool + Send + Sync + 'static {
            tauri::generate_handler![$(commands::$command),*]
        }
    };
}

include!("command_list.rs");

/// What the commands share: the App, and how model loading went (the window may ask before any event reached it).
pub struct Desktop {
    pub app: App,
    model_status: Arc<Mutex<ModelStatus>>,
}

#[derive(Default)]
struct ModelStatus {
    loads_in_flight: usize,
    last_error: Option<ApiError>,
}

/// The status holds a counter and the last error, consistent even if a holder panicked, so a poisoned lock is
/// used as it is.
fn lock(status: &Mutex<ModelStatus>) -> MutexGuard<'_, ModelStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Desktop {
    pub fn new(app: App) -> Desktop {
        Desktop { app, model_status: Arc::default() }
    }

    pub fn health(&self) -> Health {
        let status = lock(&self.model_status);
        Health {
            status: "ok",
            version: env!("CARGO_PKG_VERSION"),
            model: self.app.model_info(),
            model_loading: status.loads_in_flight > 0,
            model_error: status.last_error.clone(),
        }
    }

    /// [`App::load_model`], with its outcome remembered for `health` and announced to every window.
    pub async fn load_model(&self, handle: &AppHandle, request: LoadModelRequest) -> Result<ModelInfo, ApiError> {
        self.load_counted(handle, request, self.begin_load()).await
    }

    /// Counts a load as in flight from now on (before the load itself may have started).
    fn begin_load(&self) -> LoadInFlight {
        lock(&self.model_status).loads_in_flight += 1;
        LoadInFlight { status: self.model_status.clone() }
    }

    async fn load_counted(
        &self,
        handle: &AppHandle,
        request: LoadModelRequest,
        loading: LoadInFlight,
    ) -> Result<ModelInfo, ApiError> {
        let result = self.app.load_model(request).await;
        lock(&loading.status).last_error = result.as_ref().err().cloned();
        drop(loading);
        match &result {
            Ok(info) => {
                tracing::info!(model = %info.path, device = %info.device, "model loaded");
                events::emit(handle, events::MODEL_LOADED, info.clone());
            }
            Err(error) => {
                tracing::warn!(%error, "cannot load the model");
                events::emit(handle, events::MODEL_ERROR, error.clone());
            }
        }
        result
    }
}

/// One load in flight while it lives: dropped on every path (also if a load's future were dropped halfway), so
/// `health` cannot say "loading" forever.
struct LoadInFlight {
    status: Arc<Mutex<ModelStatus>>,
}

impl Drop for LoadInFlight {
    fn drop(&mut self) {
        let mut status = lock(&self.status);
        status.loads_in_flight = status.loads_in_flight.saturating_sub(1);
    }
}

/// Runs the desktop app until its window closes.
pub fn run() -> ExitCode {
    init_tracing();
    let result = tauri::Builder::default()
        // The opener's click handler sends `<a target="_blank">` (and Ctrl/Shift-clicked) http(s) links to the
        // system browser, through its `open_url` command and the capability's http/https scope.
        .plugin(tauri_plugin_opener::init())
        .invoke_handler(invoke_handler())
        .setup(|tauri_app| setup(tauri_app.handle()))
        // Generated by build.rs (tauri-build's codegen), with ui/dist embedded.
        .run(tauri::tauri_build_context!());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sepchat-desktop: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` chooses what is logged (default: info), to stderr, as the CLI does.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only when a subscriber is already set, which then keeps logging.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn setup(handle: &AppHandle) -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = data_dir(handle)?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|error| format!("cannot create the data directory {}: {error}", data_dir.display()))?;
    let app = tauri::async_runtime::block_on(App::open(&data_dir))?;
    tracing::info!(data_dir = %data_dir.display(), interrupted = app.recovered_on_open(), "history opened");
    handle.manage(Desktop::new(app));
    open_main_window(handle, &data_dir)?;

    // The window opens at once; the model (a few seconds to load) follows, and the window hears of it. The load
    // counts from here rather than from inside the task, so a `health` right after start already says "loading".
    let loading = handle.state::<Desktop>().begin_load();
    let handle = handle.clone();
    tauri::async_runtime::spawn(async move {
        let desktop = handle.state::<Desktop>();
        // The outcome goes out as an event and into `health`; the window can also load another model.
        let _ = desktop.load_counted(&handle, LoadModelRequest::default(), loading).await;
    });
    Ok(())
}

/// `SEPCHAT_DATA_DIR` when set (tests, several profiles), else Tauri's app data directory.
fn data_dir(handle: &AppHandle) -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    Ok(handle.path().app_data_dir()?)
}

/// The window of tauri.conf.json (declared there with `create: false`), built here so that it gets the navigation
/// guard and a webview data folder inside the data directory.
fn open_main_window(handle: &AppHandle, data_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let config = handle
        .config()
        .app
        .windows
        .iter()
        .find(|window| window.label == MAIN_WINDOW)
        .ok_or("tauri.conf.json declares no window labelled `main`")?
        .clone();
    let on_navigate = handle.clone();
    let on_new_window = handle.clone();
    WebviewWindowBuilder::from_config(handle, &config)?
        .data_directory(data_dir.join(WEBVIEW_DATA_DIR_NAME))
        .on_navigation(move |url| {
            if is_app_url(url) {
                return true;
            }
            open_outside(&on_navigate, url);
            false
        })
        .on_new_window(move |url, _features| {
            open_outside(&on_new_window, &url);
            NewWindowResponse::Deny
        })
        .build()?;
    Ok(())
}

/// The app's own pages: `tauri://localhost` (Linux, macOS) or `http(s)://tauri.localhost` (Windows).
pub fn is_app_url(url: &Url) -> bool {
    url.scheme() == "tauri" || url.host_str() == Some("tauri.localhost")
}

/// Whether a link the window tried to follow is opened in the system browser: web pages only (never a file, a
/// custom scheme or the app's own pages).
pub fn opens_in_browser(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && !is_app_url(url)
}

/// The window never leaves the app: a link it tries to follow goes to the system browser if it is a web page, and
/// nowhere otherwise.
fn open_outside(handle: &AppHandle, url: &Url) {
    if !opens_in_browser(url) {
        tracing::warn!(%url, "refused a navigation away from the app");
        return;
    }
    if let Err(error) = handle.opener().open_url(url.as_str(), None::<&str>) {
        tracing::warn!(%url, %error, "cannot open the link in the system browser");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_pages_leave_for_the_browser() {
        let url = |text: &str| Url::parse(text).expect("a valid URL");
        assert!(is_app_url(&url("tauri://localhost/index.html")));
        assert!(is_app_url(&url("http://tauri.localhost/")));
        assert!(opens_in_browser(&url("https://example.com/page")));
        assert!(opens_in_browser(&url("http://example.com/")));
        assert!(!opens_in_browser(&url("http://tauri.localhost/")));
        assert!(!opens_in_browser(&url("file:///etc/passwd")));
        assert!(!opens_in_browser(&url("javascript:alert(1)")));
        assert!(!opens_in_browser(&url("mailto:someone@example.com")));
    }
}
