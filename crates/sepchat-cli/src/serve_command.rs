//! `sepchat serve`: the App behind the local HTTP server (`sepchat-server`) for the browser UI. The URL is the
//! only line on stdout, so a script or the desktop shell can read it; everything else goes to stderr. Ctrl-C or
//! SIGTERM shuts it down gracefully: replies being generated are stopped and stored, then it exits with status 0.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sepchat_core::App;
use sepchat_server::{
    ApiToken, Server, ServerConfig, DEFAULT_BODY_LIMIT, DEFAULT_MAX_GENERATIONS, DEFAULT_PORT,
    DEFAULT_UPLOAD_BODY_LIMIT, SHUTDOWN_GRACE,
};

use crate::chat_command::{load_model, runtime};
use crate::options::ModelArgs;

/// How long the runtime waits, once the server has stopped, for work still on its threads (the engine finishing a
/// stopped step). The server's own grace has already waited for the replies to be stored.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct ServeArgs {
    /// Port on 127.0.0.1 (the server never listens on other interfaces); 0: any free port. Default: 7341, or any
    /// free port when that one is taken.
    #[arg(long)]
    pub port: Option<u16>,
    /// The built web UI (a folder with index.html).
    #[arg(long, value_name = "DIR", env = "SEPCHAT_UI_DIR", default_value = "ui/dist")]
    pub ui_dir: PathBuf,
    /// Replies generating or waiting at once; past that, new ones are answered "busy".
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_GENERATIONS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_generations: u32,
    /// Also serve an OpenAI-compatible API (/v1/models, /v1/chat/completions) for existing clients. Every request
    /// needs `Authorization: Bearer <token>`; the token is generated at start and printed on stderr, unless
    /// --api-token gives one.
    #[arg(long)]
    pub api: bool,
    /// The API's bearer token instead of a generated one (at least 16 visible ASCII characters). Ignored without
    /// --api, so a token kept in the environment does not turn the API on.
    #[arg(long, value_name = "TOKEN", env = "SEPCHAT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
}

pub fn run(model_args: &ModelArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let served = runtime.block_on(serve(model_args, args));
    // Dropping a runtime waits for every blocking task without limit; the server already waited its grace.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(model_args: &ModelArgs, args: &ServeArgs) -> anyhow::Result<()> {
    // Checked before the model loads, so a bad token fails at once.
    let api = match (args.api, &args.api_token) {
        (false, _) => None,
        (true, Some(token)) => Some((ApiToken::new(token.clone()).context("--api-token")?, false)),
        (true, None) => Some((ApiToken::generate()?, true)),
    };
    let app = App::open_default().await?;
    let info = load_model(&app, model_args).await?;
    eprintln!("model: {} on {}", info.path, info.device);
    eprintln!("history: {}", app.data_dir().display());
    let config = ServerConfig {
        port: args.port,
        ui_dir: Some(args.ui_dir.clone()),
        body_limit: DEFAULT_BODY_LIMIT,
        upload_body_limit: DEFAULT_UPLOAD_BODY_LIMIT,
        max_generations: args.max_generations as usize,
        api: api.as_ref().map(|(token, _)| token.clone()),
    };
    let server = Server::bind(app, config).await?;
    if args.port.is_none() && server.local_addr().port() != DEFAULT_PORT {
        eprintln!("port {DEFAULT_PORT} is taken (another sepchat serve?); using {}", server.local_addr().port());
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", server.url())?;
    stdout.flush()?;
    if let Some((token, generated)) = &api {
        eprintln!("OpenAI-compatible API: {}v1", server.url());
        if *generated {
            eprintln!("API token (send as `Authorization: Bearer <token>`): {}", token.as_str());
        } else {
            eprintln!("API token: the one given with --api-token / SEPCHAT_API_TOKEN");
        }
    }
    eprintln!("serving on {} (Ctrl-C stops)", server.url());
    server.run(shutdown_signal()).await.context("the server failed")?;
    eprintln!("stopped");
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM (what service managers and `kill` send). A signal that
/// cannot be listened for is never received, so the process is then ended like any other.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => eprintln!("interrupted: stopping (waiting up to {}s for replies to be stored)", SHUTDOWN_GRACE.as_secs()),
        () = terminate => eprintln!("terminated: stopping (waiting up to {}s for replies to be stored)", SHUTDOWN_GRACE.as_secs()),
    }
}
