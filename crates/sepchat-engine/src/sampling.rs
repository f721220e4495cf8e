//! Choosing the next token: candle-transformers' `LogitsProcessor` (greedy, temperature, top-k,
//! top-p) with min-p and a repeat penalty in front of it. A seed makes runs reproducible.

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use crate::error::{EngineError, Result};

/// Sampling settings of one request; the defaults are those of common chat apps.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (always the most likely token).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sums to `top_p`.
    pub top_p: Option<f64>,
    /// Keep only the `top_k` most likely tokens.
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` times the most likely token's.
    pub min_p: Option<f64>,
    /// Divides positive logits (multiplies negative ones) of recently seen tokens; 1 is off.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: Some(0.9),
            top_k: Some(40),
            min_p: Some(0.05),
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            seed: 299_792_458,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding, no penalty: the setting reference comparisons use.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_p: None, top_k: None, min_p: None, repeat_penalty: 1.0, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Rejects settings that make no sense, with a message naming the setting.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(EngineError::InvalidSampling(message));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return invalid(format!("temperature must be a finite number >= 0, got {}", self.temperature));
        }
        if let Some(top_p) = self.top_p {
            if !(top_p > 0.0 && top_p <= 1.0) {
                return invalid(format!("top-p must be in (0, 1], got {top_p}"));
            }
        }
        if self.top_k == Some(0) {
            return invalid("top-k must be at least 1".to_string());
        }
        if let Some(min_p) = self.min_p {
            if !(0.0..=1.0).contains(&min_p) {
                return invalid(format!("min-p must be in [0, 1], got {min_p}"));
            }
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return invalid(format!("repeat penalty must be > 0, got {}", self.repeat_penalty));
        }
        Ok(())
    }
}

/// A stateful sampler for one generation (its random state advances with every token).
pub struct Sampler {
    params: SamplingParams,
    processor: LogitsProcessor,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let sampling = if params.is_greedy() {
            Sampling::ArgMax
        } else {
            let temperature = params.temperature;
            match (params.top_k, params.top_p) {
                (None, None) => Sampling::All { temperature },
                (Some(k), None) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            }
        };
        let processor = LogitsProcessor::from_sampling(params.seed, sampling);
        Ok(Self { params, processor })
    }

    /// Picks the next token from `logits` (`[vocab]`), given the tokens seen so far.
    pub fn sample(&mut self, logits: &Tensor, history: &[u32]) -> Result<u32> {
        let mut logits = logits.flatten_all()?;
        if self.params.repeat_penalty != 1.0 && self.params.repeat_last_n > 0 {
            let recent = &history[history.len().saturating_sub(self.params.repeat_last_n)..];
            logits = candle_transformers::utils::apply_repeat_penalty(&logits, self.params.repeat_penalty, recent)?;
        }
        if let (Some(min_p), false) = (self.params.min_p, self.params.is_greedy()) {
            if min_p > 0.0 {
                logits = apply_min_p(&logits, min_p)?;
            }
        }
        Ok(self.processor.sample(&logits)?)
    }
}

/// Keeps tokens with p >= min_p * p_max. In logit space that is logit >= max + ln(min_p), so no
/// softmax is needed.
fn apply_min_p(logits: &Tensor, min_p: f64) -> Result<Tensor> {
    let mut values = logits.to_vec1::<f32>()?;
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let threshold = max + min_p.ln() as f32;
    for value in values.iter_mut() {
        if *value < threshold {
            *value = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(values, logits.dims(), &Device::Cpu)?.to_device(logits.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn greedy_takes_the_argmax() -> Result<()> {
        let mut sampler = Sampler::new(SamplingParams::greedy())?;
        assert_eq!(sampler.sample(&logits(&[0.1, 3.0, 2.9]), &[])?, 1);
        Ok(())
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() -> Result<()> {
        let flat: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let params = SamplingParams {
            temperature: 1.5,
            top_p: None,
            top_k: None,
            min_p: None,
            repeat_penalty: 1.0,
            ..SamplingParams::default()
        };
        let run = |seed: u64| -> Result<Vec<u32>> {
            let mut sampler = Sampler::new(SamplingParams { seed, ..params.clone() })?;
            (0..40).map(|_| sampler.sample(&logits(&flat), &[])).collect()
        };
        assert_eq!(run(1)?, run(1)?);
        assert_ne!(run(1)?, run(2)?);
        Ok(())
    }

    #[test]
    fn min_p_removes_unlikely_tokens() -> Result<()> {
        // p(token 1) / p(token 0) = e^-5 < 0.05: with min-p 0.05 token 1 can never be drawn.
        let params = SamplingParams {
            temperature: 5.0,
            top_p: None,
            top_k: None,
            min_p: Some(0.05),
            repeat_penalty: 1.0,
            ..SamplingParams::default()
        };
        let mut sampler = Sampler::new(params)?;
        for _ in 0..200 {
            assert_eq!(sampler.sample(&logits(&[5.0, 0.0]), &[])?, 0);
        }
        Ok(())
    }

    #[test]
    fn repeat_penalty_changes_the_greedy_choice() -> Result<()> {
        let params = SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() };
        let mut sampler = Sampler::new(params)?;
        // Token 0 was just seen: 3.0 / 2 = 1.5 < 2.0.
        assert_eq!(sampler.sample(&logits(&[3.0, 2.0]), &[0])?, 1);
        Ok(())
    }

    #[test]
    fn nonsense_settings_are_refused_with_their_name() {
        let bad = [
            SamplingParams { temperature: f64::NAN, ..SamplingParams::default() },
            SamplingParams { top_p: Some(1.5), ..SamplingParams::default() },
            SamplingParams { top_k: Some(0), ..SamplingParams::default() },
            SamplingParams { min_p: Some(-0.1), ..SamplingParams::default() },
            SamplingParams { repeat_penalty: 0.0, ..SamplingParams::default() },
        ];
        let names = ["temperature", "top-p", "top-k", "min-p", "repeat penalty"];
        for (params, name) in bad.iter().zip(names) {
            let message = params.validate().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(name), "{message}");
        }
    }
}
