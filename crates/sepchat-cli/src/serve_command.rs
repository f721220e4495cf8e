//! `sepchat serve`: the App behind the local HTTP server (`sepchat-server`) for the browser UI. The URL is the
//! only line on stdout, so a script or the desktop shell can read it; everything else goes to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sepchat_core::App;
use sepchat_server::{Server, ServerConfig, DEFAULT_BODY_LIMIT, DEFAULT_MAX_GENERATIONS, DEFAULT_PORT};

use crate::chat_command::{load_model, runtime};
use crate::options::ModelArgs;

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
}

pub fn run(model_args: &ModelArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(serve(model_args, args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(model_args: &ModelArgs, args: &ServeArgs) -> anyhow::Result<()> {
    let app = App::open_default().await?;
    let info = load_model(&app, model_args).await?;
    eprintln!("model: {} on {}", info.path, info.device);
    eprintln!("history: {}", app.data_dir().display());
    let config = ServerConfig {
        port: args.port,
        ui_dir: Some(args.ui_dir.clone()),
        body_limit: DEFAULT_BODY_LIMIT,
        max_generations: args.max_generations as usize,
    };
    let server = Server::bind(app, config).await?;
    if args.port.is_none() && server.local_addr().port() != DEFAULT_PORT {
        eprintln!("port {DEFAULT_PORT} is taken (another sepchat serve?); using {}", server.local_addr().port());
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", server.url())?;
    stdout.flush()?;
    eprintln!("serving on {} (Ctrl-C stops)", server.url());
    let ctrl_c = async {
        // Without a signal handler there is no clean stop; the process is then ended like any other.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    server.run(ctrl_c).await.context("the server failed")?;
    eprintln!("stopped");
    Ok(())
}
