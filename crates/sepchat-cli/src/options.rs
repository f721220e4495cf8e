//! Flags shared by several commands: which model, where it runs, and how to sample.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sepchat_engine::{DeviceChoice, LlamaModel, SamplingParams};

#[derive(Args)]
pub struct ModelArgs {
    /// A Llama-architecture GGUF file; default: the downloaded SmolLM2-135M-Instruct.
    #[arg(long, global = true, env = "SEPCHAT_MODEL")]
    pub model: Option<PathBuf>,
    /// auto, cpu, cuda or metal (GPU backends need the `cuda`/`metal` build features).
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceChoice,
    /// Worker threads for the matrix kernels; default: all cores.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    /// Sizes the thread pools once, before candle or rayon start any thread.
    pub fn apply_threads(&self) {
        if let Some(threads) = self.threads.filter(|&n| n > 0) {
            // Both candle's kernels and rayon read this variable when their pools start.
            std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
            let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
        }
    }

    /// The model path: `--model`, else the default model, which must have been fetched.
    pub fn model_path(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.model {
            return Ok(path.clone());
        }
        let path = sepchat_gguf::default_model::default_model_path()
            .context("cannot find a home directory for the model cache; pass --model PATH")?;
        if !path.exists() {
            anyhow::bail!(
                "the default model is not downloaded yet ({}); run `sepchat fetch-model` or `make run`, or pass --model PATH",
                path.display()
            );
        }
        Ok(path)
    }

    /// Loads the model with a spinner on stderr (hidden when stderr is not a terminal).
    pub fn load(&self) -> anyhow::Result<LlamaModel> {
        let path = self.model_path()?;
        let device = self.device.open()?;
        let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.enable_steady_tick(Duration::from_millis(100));
        let model = LlamaModel::load(&path, &device);
        spinner.finish_and_clear();
        Ok(model?)
    }
}

#[derive(Args, Clone)]
pub struct GenerationArgs {
    // Negative numbers are accepted by the parser so that validation can name the setting.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true)]
    pub top_p: f64,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub min_p: f64,
    #[arg(long, default_value_t = 1.1, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Always take the most likely token (temperature 0, no penalty); for reproducible output.
    #[arg(long)]
    pub greedy: bool,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// The system prompt; an empty string sends none.
    #[arg(long, default_value = DEFAULT_SYSTEM_PROMPT)]
    pub system: String,
}

/// The GGUF template's own default persona makes the default model's answers degenerate, while
/// this plain one gives correct short answers (checked against llama.cpp; see PRODUCT.md).
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant";

impl GenerationArgs {
    pub fn sampling(&self) -> SamplingParams {
        if self.greedy {
            return SamplingParams { seed: self.seed, ..SamplingParams::greedy() };
        }
        SamplingParams {
            temperature: self.temperature,
            top_p: (self.top_p < 1.0).then_some(self.top_p),
            top_k: (self.top_k > 0).then_some(self.top_k),
            min_p: (self.min_p > 0.0).then_some(self.min_p),
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}

/// Logging to stderr, controlled by RUST_LOG (quiet by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
