//! Which KV slots a conversation keeps: dense, StreamingLLM and SepCache (SepLLM), as pure code
//! over token ids and block boundaries. Nothing here touches a tensor; [`crate::kv_cache`]
//! applies a [`Compaction`] to the keys and values of every layer.
//!
//! The slot list of every policy has the same shape (see ../shared/design/SEPLLM.md):
//!
//! ```text
//! [ initial (<= a) | separators (<= s) | past window | local window (w) ]   length L <= c
//! ```
//!
//! Dense never compacts; StreamingLLM has no separator block and keeps the most recent tokens
//! that fit; SepCache harvests the separators of the past window and keeps the last w tokens.

use std::fmt;
use std::str::FromStr;

use crate::kv_format::KvFormat;

/// Cache profiles by name, with their SepCache parameters (a, s, w, c).
pub const PROFILES: [(&str, SepParams); 3] = [
    ("low", SepParams { initial: 4, separators: 128, local: 256, capacity: 512 }),
    ("default", SepParams { initial: 4, separators: 256, local: 1024, capacity: 2048 }),
    ("high", SepParams { initial: 4, separators: 512, local: 2048, capacity: 4096 }),
];

/// SepCache's four sizes, named as in SEPLLM.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SepParams {
    /// a: the first tokens of the stream, kept forever (attention sinks; raised to cover a
    /// chat's system turn).
    pub initial: usize,
    /// s: separator slots harvested from evicted text; the oldest go first when full.
    pub separators: usize,
    /// w: the most recent tokens, always kept.
    pub local: usize,
    /// c: the most slots ever held.
    pub capacity: usize,
}

/// The keep/evict rule of a conversation's cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CachePolicy {
    /// Keep every token, up to `capacity` slots (the model's trained context); past it, a
    /// `ContextFull` error, never a silent truncation.
    Dense { capacity: usize },
    /// StreamingLLM: `initial` attention sinks plus the most recent tokens, `capacity` in all.
    Streaming { initial: usize, capacity: usize },
    /// SepCache.
    Sep(SepParams),
}

/// Which RoPE position a slot's key carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RopePositions {
    /// Its index in the cache (SepLLM's and StreamingLLM's choice; keys moved by a compaction
    /// are re-rotated), so positions never leave the trained range. Written `pos=shift`.
    #[default]
    CacheSlot,
    /// Its position in the whole stream (the paper's "abs" ablation; positions grow without
    /// bound). Written `pos=abs`.
    Stream,
}

/// When a compaction runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CompactionTiming {
    /// Before a chunk that would push the cache past c is appended, so attention never sees
    /// more than c keys (the chat engine).
    #[default]
    BeforeAppend,
    /// After a step left more than c slots (the reference streaming protocol: attention sees up
    /// to c + 1 keys). Written `at=step`.
    AfterStep,
}

/// Which token ids count as separators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SeparatorRule {
    /// The documented vocabulary rule of [`sepchat_text::GgufTokenizer::separator_ids`]
    /// (punctuation and whitespace tokens, BOS, the turn marker). Written `seps=vocab`.
    #[default]
    Vocabulary,
    /// The paper's nine separators with their space-prefixed forms, ` \n` and runs of two or
    /// three spaces: the set of the reference streaming experiment. Written `seps=paper`.
    Paper,
}

/// Everything that decides a cache's behaviour; `Display` writes the spec `FromStr` parses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheConfig {
    pub policy: CachePolicy,
    pub positions: RopePositions,
    pub timing: CompactionTiming,
    pub separators: SeparatorRule,
    /// How keys and values are stored (`kv=f16|q8`).
    pub format: KvFormat,
}

impl CacheConfig {
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            positions: RopePositions::default(),
            timing: CompactionTiming::default(),
            separators: SeparatorRule::default(),
            format: KvFormat::default(),
        }
    }

    /// A named profile (`low`, `default`, `high`).
    pub fn profile(name: &str) -> Option<Self> {
        PROFILES.iter().find(|(profile, _)| *profile == name).map(|(_, params)| Self::new(CachePolicy::Sep(*params)))
    }

    /// The chat default: the `default` SepCache profile.
    pub fn chat_default() -> Self {
        Self::new(CachePolicy::Sep(PROFILES[1].1))
    }

    /// A dense cache bounded by `context_length`.
    pub fn dense(context_length: usize) -> Self {
        Self::new(CachePolicy::Dense { capacity: context_length })
    }

    /// Checks the sizes against each other and against the model's trained context.
    pub fn validate(&self, context_length: usize) -> Result<(), CacheSpecError> {
        let capacity = self.policy.capacity();
        if capacity == 0 {
            return Err(CacheSpecError::Invalid { spec: self.to_string(), reason: "c must be at least 1".into() });
        }
        if capacity > context_length {
            return Err(CacheSpecError::Invalid {
                spec: self.to_string(),
                reason: format!("c = {capacity} exceeds the model's trained context of {context_length} tokens"),
            });
        }
        match &self.policy {
            CachePolicy::Dense { .. } => Ok(()),
            CachePolicy::Streaming { initial, capacity } if initial >= capacity => Err(CacheSpecError::Invalid {
                spec: self.to_string(),
                reason: format!("a = {initial} must be smaller than c = {capacity}"),
            }),
            CachePolicy::Streaming { .. } => Ok(()),
            CachePolicy::Sep(SepParams { initial, separators, local, capacity }) => {
                if initial + separators + local >= *capacity {
                    return Err(CacheSpecError::Invalid {
                        spec: self.to_string(),
                        reason: format!(
                            "a + s + w = {} must be smaller than c = {capacity}",
                            initial + separators + local
                        ),
                    });
                }
                if *local == 0 {
                    return Err(CacheSpecError::Invalid {
                        spec: self.to_string(),
                        reason: "w must be at least 1 (the token being generated is always kept)".into(),
                    });
                }
                Ok(())
            }
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::chat_default()
    }
}

impl CachePolicy {
    /// c: the most slots this policy holds between steps.
    pub fn capacity(&self) -> usize {
        match self {
            Self::Dense { capacity } | Self::Streaming { capacity, .. } => *capacity,
            Self::Sep(params) => params.capacity,
        }
    }

    /// a, before a system turn raises it.
    pub fn initial(&self) -> usize {
        match self {
            Self::Dense { .. } => 0,
            Self::Streaming { initial, .. } => *initial,
            Self::Sep(params) => params.initial,
        }
    }

    /// s (0 for the policies without a separator block).
    pub fn separator_limit(&self) -> usize {
        match self {
            Self::Sep(params) => params.separators,
            _ => 0,
        }
    }

    /// w (for StreamingLLM, everything after the sinks; for dense, everything).
    pub fn local_limit(&self) -> usize {
        match self {
            Self::Dense { capacity } => *capacity,
            Self::Streaming { initial, capacity } => capacity - initial.min(capacity),
            Self::Sep(params) => params.local,
        }
    }

    pub fn evicts(&self) -> bool {
        !matches!(self, Self::Dense { .. })
    }

    /// The longest chunk that can always be appended after a compaction without passing c:
    /// prompts are prefilled in chunks no longer than this.
    pub fn max_chunk(&self, initial_limit: usize) -> usize {
        match self {
            Self::Dense { capacity } => *capacity,
            Self::Streaming { capacity, .. } => capacity.saturating_sub(initial_limit).max(1),
            Self::Sep(params) => {
                capacity_minus(params.capacity, initial_limit + params.separators + params.local).max(1)
            }
        }
    }

    /// Decides which slots to keep when `incoming` tokens are about to be appended to a cache
    /// holding `slot_tokens` laid out as `blocks` (`incoming` is 0 for a compaction after a
    /// step). Returns `None` when everything fits (`L + incoming <= c`) or the policy never
    /// evicts. `initial_limit` is a, possibly raised to cover a system turn.
    pub fn plan(
        &self,
        initial_limit: usize,
        blocks: Blocks,
        slot_tokens: &[u32],
        is_separator: impl Fn(u32) -> bool,
        incoming: usize,
    ) -> Option<Compaction> {
        let len = slot_tokens.len();
        if !self.evicts() || len + incoming <= self.capacity() {
            return None;
        }
        let initial = initial_limit.min(len);
        let old_separators = blocks.separators.min(len - initial);
        match self {
            Self::Dense { .. } => None,
            Self::Streaming { capacity, .. } => {
                // Keep the sinks and as many of the most recent tokens as leave room for the chunk.
                let recent = capacity_minus(*capacity, initial + incoming).min(len - initial);
                let keep: Vec<usize> = (0..initial).chain(len - recent..len).collect();
                let evicted = len - keep.len();
                Some(Compaction {
                    keep,
                    blocks: Blocks { initial, separators: 0 },
                    dropped_separators: 0,
                    dropped_other: evicted,
                })
            }
            Self::Sep(SepParams { separators: separator_limit, local, .. }) => {
                let local_start = len.saturating_sub(*local).max(initial + old_separators);
                let past = initial + old_separators..local_start;
                let harvested = past.clone().filter(|&slot| is_separator(slot_tokens[slot]));
                let candidates: Vec<usize> = (initial..initial + old_separators).chain(harvested).collect();
                let pushed_out = candidates.len().saturating_sub(*separator_limit);
                let kept_separators = &candidates[pushed_out..];
                let keep: Vec<usize> =
                    (0..initial).chain(kept_separators.iter().copied()).chain(local_start..len).collect();
                let evicted = len - keep.len();
                Some(Compaction {
                    keep,
                    blocks: Blocks { initial, separators: kept_separators.len() },
                    dropped_separators: pushed_out,
                    dropped_other: evicted - pushed_out,
                })
            }
        }
    }
}

fn capacity_minus(capacity: usize, used: usize) -> usize {
    capacity.saturating_sub(used)
}

/// Sizes of the first two blocks of the slot list; the past and local windows are the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Blocks {
    pub initial: usize,
    pub separators: usize,
}

/// One decision: the slots to keep, in order, and what the cache looks like after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Indices of the slots kept, strictly increasing.
    pub keep: Vec<usize>,
    pub blocks: Blocks,
    /// Separators pushed out of a full separator block (they had been kept before).
    pub dropped_separators: usize,
    /// Every other evicted token (non-separators of the past window, and for StreamingLLM all
    /// evicted tokens).
    pub dropped_other: usize,
}

/// A cache spec the user wrote that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheSpecError {
    #[error("unknown cache policy `{spec}`: use dense, streaming, sep, or a profile (low, default, high), e.g. `sep:a=4,s=64,w=256,c=512`")]
    UnknownPolicy { spec: String },
    #[error("cache spec `{spec}`: {reason}")]
    Invalid { spec: String, reason: String },
}

impl FromStr for CacheConfig {
    type Err = CacheSpecError;

    /// Parses `dense`, `dense:c=4096`, `streaming:a=4,c=1666`, `sep:a=4,s=64,w=256,c=512`, or
    /// a profile name optionally followed by overrides (`low:w=300`), plus the options
    /// `pos=shift|abs`, `at=append|step`, `seps=vocab|paper` and `kv=f16|q8`. Sizes not given come from the
    /// `default` profile (dense: the model's context, filled in by the caller via `c`; 0 means
    /// "the model's trained context").
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let spec = spec.trim();
        let invalid = |reason: String| CacheSpecError::Invalid { spec: spec.to_string(), reason };
        let (name, options) = spec.split_once(':').unwrap_or((spec, ""));
        let defaults = PROFILES[1].1;
        let (kind, mut params) = match name {
            "dense" => ("dense", SepParams { initial: 0, separators: 0, local: 0, capacity: 0 }),
            "streaming" => ("streaming", SepParams { separators: 0, local: 0, ..defaults }),
            "sep" => ("sep", defaults),
            profile => match PROFILES.iter().find(|(candidate, _)| *candidate == profile) {
                Some((_, params)) => ("sep", *params),
                None => return Err(CacheSpecError::UnknownPolicy { spec: spec.to_string() }),
            },
        };
        let mut config = CacheConfig::new(CachePolicy::Dense { capacity: 0 });
        for option in options.split(',').map(str::trim).filter(|option| !option.is_empty()) {
            let (key, value) = option.split_once('=').ok_or_else(|| invalid(format!("`{option}` is not key=value")))?;
            let number = || -> Result<usize, CacheSpecError> {
                value.parse::<usize>().map_err(|_| invalid(format!("{key} = `{value}` is not a whole number")))
            };
            let allowed = match kind {
                "dense" => &["c", "pos", "at", "kv"][..],
                "streaming" => &["a", "c", "pos", "at", "kv"][..],
                _ => &["a", "s", "w", "c", "pos", "at", "seps", "kv"][..],
            };
            if !allowed.contains(&key) {
                return Err(invalid(format!("`{key}` does not apply to {kind}; use {}", allowed.join(", "))));
            }
            match key {
                "a" => params.initial = number()?,
                "s" => params.separators = number()?,
                "w" => params.local = number()?,
                "c" => params.capacity = number()?,
                "pos" => {
                    config.positions = match value {
                        "shift" => RopePositions::CacheSlot,
                        "abs" => RopePositions::Stream,
                        _ => return Err(invalid(format!("pos = `{value}`: use shift or abs"))),
                    }
                }
                "at" => {
                    config.timing = match value {
                        "append" => CompactionTiming::BeforeAppend,
                        "step" => CompactionTiming::AfterStep,
                        _ => return Err(invalid(format!("at = `{value}`: use append or step"))),
                    }
                }
                "seps" => {
                    config.separators = match value {
                        "vocab" => SeparatorRule::Vocabulary,
                        "paper" => SeparatorRule::Paper,
                        _ => return Err(invalid(format!("seps = `{value}`: use vocab or paper"))),
                    }
                }
                "kv" => {
                    config.format =
                        KvFormat::parse(value).ok_or_else(|| invalid(format!("kv = `{value}`: use f16 or q8")))?
                }
                _ => return Err(invalid(format!("unknown option `{key}`"))),
            }
        }
        config.policy = match kind {
            "dense" => CachePolicy::Dense { capacity: params.capacity },
            "streaming" => CachePolicy::Streaming { initial: params.initial, capacity: params.capacity },
            _ => CachePolicy::Sep(params),
        };
        Ok(config)
    }
}

impl CacheConfig {
    /// Parses a spec and fills a dense cache's unset capacity (`dense` alone, or `c=0`) with
    /// the model's trained context, then validates it.
    pub fn parse_for_model(spec: &str, context_length: usize) -> Result<Self, CacheSpecError> {
        let mut config: CacheConfig = spec.parse()?;
        if config.policy == (CachePolicy::Dense { capacity: 0 }) {
            config.policy = CachePolicy::Dense { capacity: context_length };
        }
        config.validate(context_length)?;
        Ok(config)
    }
}

impl fmt::Display for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            CachePolicy::Dense { capacity } => write!(f, "dense:c={capacity}")?,
            CachePolicy::Streaming { initial, capacity } => write!(f, "streaming:a={initial},c={capacity}")?,
            CachePolicy::Sep(SepParams { initial, separators, local, capacity }) => {
                write!(f, "sep:a={initial},s={separators},w={local},c={capacity}")?
            }
        }
        if self.positions == RopePositions::Stream {
            write!(f, ",pos=abs")?;
        }
        if self.timing == CompactionTiming::AfterStep {
            write!(f, ",at=step")?;
        }
        // Only SepCache has a separator block; the rule means nothing to the others.
        if self.separators == SeparatorRule::Paper && matches!(self.policy, CachePolicy::Sep(_)) {
            write!(f, ",seps=paper")?;
        }
        if self.format != KvFormat::F16 {
            write!(f, ",kv={}", self.format.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sep(a: usize, s: usize, w: usize, c: usize) -> CachePolicy {
        CachePolicy::Sep(SepParams { initial: a, separators: s, local: w, capacity: c })
    }

    #[test]
    fn specs_round_trip_through_display() {
        for spec in [
            "dense:c=8192",
            "streaming:a=4,c=1666",
            "sep:a=4,s=64,w=256,c=512",
            "sep:a=4,s=64,w=256,c=512,pos=abs,at=step,seps=paper",
            "sep:a=4,s=256,w=1024,c=2048,kv=q8",
            "dense:c=8192,kv=q8",
        ] {
            let config: CacheConfig = spec.parse().expect(spec);
            assert_eq!(config.to_string(), spec);
        }
        assert_eq!("low".parse::<CacheConfig>().map(|c| c.to_string()), Ok("sep:a=4,s=128,w=256,c=512".into()));
        assert_eq!("high:w=1000".parse::<CacheConfig>().map(|c| c.policy), Ok(sep(4, 512, 1000, 4096)));
        assert_eq!(
            CacheConfig::parse_for_model("dense", 8192).map(|c| c.policy),
            Ok(CachePolicy::Dense { capacity: 8192 })
        );
    }

    #[test]
    fn bad_specs_get_clear_errors() {
        let error =
            |spec: &str| CacheConfig::parse_for_model(spec, 8192).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error("lru").contains("unknown cache policy `lru`"));
        assert!(error("sep:a=4,s=300,w=300,c=512").contains("a + s + w = 604 must be smaller than c = 512"));
        assert!(error("sep:c=20000").contains("exceeds the model's trained context of 8192"));
        assert!(error("streaming:s=4").contains("`s` does not apply to streaming"));
        assert!(error("sep:w=lots").contains("w = `lots` is not a whole number"));
        assert!(error("sep:pos=left").contains("use shift or abs"));
        assert!(error("streaming:a=10,c=10").contains("a = 10 must be smaller than c = 10"));
    }

    #[test]
    fn sep_compaction_keeps_initial_harvested_separators_and_local_window() {
        // Token 0 is the separator; a=2, s=2, w=3, c=10.
        let policy = sep(2, 2, 3, 10);
        let tokens = [5, 5, 0, 5, 0, 5, 0, 5, 5, 0, 5];
        let plan = policy.plan(2, Blocks::default(), &tokens, |t| t == 0, 0).expect("11 > 10 compacts");
        // Separators at 2, 4, 6 in the past window (2..8); the oldest is pushed out; slot 9 is local.
        assert_eq!(plan.keep, vec![0, 1, 4, 6, 8, 9, 10]);
        assert_eq!(plan.blocks, Blocks { initial: 2, separators: 2 });
        assert_eq!(plan.dropped_separators, 1);
        assert_eq!(plan.dropped_other, 3);
        assert_eq!(policy.plan(2, plan.blocks, &tokens[..10], |t| t == 0, 0), None);
    }

    #[test]
    fn streaming_keeps_sinks_and_leaves_room_for_the_chunk() {
        let policy = CachePolicy::Streaming { initial: 2, capacity: 6 };
        let tokens = [1, 2, 3, 4, 5, 6];
        let plan = policy.plan(2, Blocks::default(), &tokens, |_| false, 2).expect("6 + 2 > 6");
        assert_eq!(plan.keep, vec![0, 1, 4, 5]);
        assert_eq!(plan.dropped_other, 2);
        assert_eq!(CachePolicy::Dense { capacity: 4 }.plan(0, Blocks::default(), &tokens, |_| true, 1), None);
    }
}
