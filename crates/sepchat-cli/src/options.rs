//! Flags shared by several commands: which model, where it runs, and how to sample.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sepchat_engine::{Arithmetic, CacheConfig, CacheSpecError, DeviceChoice, LlamaModel, SamplingParams};

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
    /// How the CPU attention of decode steps rounds: `fast` (f32, the default) or `llama-cpp`
    /// (llama.cpp's flash-attention kernel rounding for rounding: its greedy output exactly).
    #[arg(long, global = true, default_value = "fast")]
    pub attention: Arithmetic,
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
        let mut model = model?;
        model.set_attention_arithmetic(self.attention);
        Ok(model)
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
    /// KV cache: a SepCache profile (low, default, high), `dense`, `streaming:a=4,c=1666` or
    /// `sep:a=4,s=64,w=256,c=512` (options: pos=shift|abs, at=append|step, seps=vocab|paper,
    /// kv=f16|q8).
    #[arg(long, value_name = "SPEC", default_value = "default")]
    pub cache: String,
    /// Write the KV statistics as JSON lines to PATH (`-` for stderr): one `"event": "kv"` object
    /// after the prompt and after every token, one `"event": "done"` object per reply.
    #[arg(long, value_name = "PATH")]
    pub stats_json: Option<PathBuf>,
}

/// The GGUF template's own default persona makes the default model's answers degenerate, while
/// this plain one gives correct short answers (checked against llama.cpp; see PRODUCT.md).
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant";

impl GenerationArgs {
    /// Checks the `--cache` spec's syntax before anything slow happens (the sizes are checked
    /// against the model by [`GenerationArgs::cache_config`] once it is loaded).
    pub fn check_cache_syntax(&self) -> Result<(), CacheSpecError> {
        self.cache.parse::<CacheConfig>().map(|_| ())
    }

    /// The `--cache` spec, checked against the loaded model's trained context.
    pub fn cache_config(&self, context_length: usize) -> Result<CacheConfig, CacheSpecError> {
        CacheConfig::parse_for_model(&self.cache, context_length)
    }

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

/// Exit code of a usage error: the code clap gives its own, so scripts can tell "you asked
/// wrongly" from "it failed".
pub const USAGE_EXIT: u8 = 2;

/// Turns a cache spec the user wrote that cannot be used (a [`CacheSpecError`] at the root of the
/// error) into one `error:` line and exit code 2; every other error passes through to `main`.
/// Only flag values produce a bare `CacheSpecError`: the engine wraps its own in `EngineError`.
pub fn with_usage_exit(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(error) => match error.downcast_ref::<CacheSpecError>() {
            Some(spec_error) => {
                eprintln!("error: {}", spec_error.to_string().replace(['\n', '\r'], " "));
                Ok(ExitCode::from(USAGE_EXIT))
            }
            None => Err(error),
        },
        ok => ok,
    }
}

/// Logging to stderr, controlled by RUST_LOG (quiet by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
