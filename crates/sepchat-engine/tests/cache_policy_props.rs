//! Property tests for the pure keep/evict planner [`CachePolicy::plan`] and
//! [`CachePolicy::max_chunk`] (see ../shared/design/SEPLLM.md, "SepCache: the streaming cache").
//!
//! A small simulator holds a slot list (token id, stream position) and the block sizes, and
//! drives the planner with random streams over a six-token alphabet (a random subset of the ids
//! are separators), random policies (SepCache with a + s + w < c, StreamingLLM with a < c, the
//! initial block sometimes raised before the first compaction as a chat's system turn does),
//! random chunk sizes within `max_chunk`, and both compaction timings:
//!
//! - before-append: `plan(incoming = chunk)` before each chunk is appended;
//! - after-step: as `KvCache` does it with `at=step`, `plan(incoming = chunk - 1)` before the
//!   chunk (attention may see c + 1 keys), then `plan(incoming = 0)` after it; most steps are
//!   single tokens, which reduces to "append one token, then plan with incoming 0".
//!
//! Every compaction is applied to the simulated list and checked against the rule, and the
//! list's invariants are checked after every step. `PROPTEST_CASES` raises the case count.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use sepchat_engine::cache_policy::{
    Blocks, CacheConfig, CachePolicy, Compaction, CompactionTiming, RopePositions, SepParams, SeparatorRule,
};
use sepchat_engine::KvFormat;

/// Token ids of the simulated streams are `0..ALPHABET`.
const ALPHABET: u32 = 6;
/// Every id is a separator.
const ALL_SEPARATORS: u8 = (1 << ALPHABET) - 1;
/// The largest capacity the simulated policies get: small, so that streams of a few hundred
/// tokens compact many times.
const MAX_CAPACITY: usize = 40;
const MAX_STREAM: usize = 300;

fn config(cases: u32) -> Config {
    // No regression files next to the sources: a failure prints its minimal input instead.
    Config { cases, failure_persistence: None, ..Config::default() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    token: u32,
    /// Position in the whole stream.
    position: usize,
}

/// One simulated conversation.
#[derive(Debug, Clone)]
struct Scenario {
    policy: CachePolicy,
    /// Raise the initial block to this many tokens before the chunk with this index (ignored
    /// once a compaction has happened, as `KvCache::protect_initial` refuses it then).
    raise_initial: Option<(usize, usize)>,
    timing: CompactionTiming,
    /// Bit i set: token id i is a separator.
    separator_mask: u8,
    tokens: Vec<u32>,
    /// Chunk sizes, reduced modulo `max_chunk`; used in turn.
    chunk_seeds: Vec<usize>,
}

/// One compaction the simulator applied, with the state it was planned from.
#[derive(Debug, Clone)]
struct Applied {
    before: Vec<Slot>,
    incoming: usize,
    initial_limit: usize,
    plan: Compaction,
}

struct Sim {
    policy: CachePolicy,
    separator_mask: u8,
    initial_limit: usize,
    blocks: Blocks,
    slots: Vec<Slot>,
    /// Every token of the stream so far.
    seen: Vec<u32>,
    applied: Vec<Applied>,
}

fn is_separator(mask: u8, token: u32) -> bool {
    token < 8 && mask & (1 << token) != 0
}

impl Sim {
    fn new(policy: CachePolicy, separator_mask: u8) -> Self {
        let initial_limit = policy.initial();
        Self {
            policy,
            separator_mask,
            initial_limit,
            blocks: Blocks::default(),
            slots: Vec::new(),
            seen: Vec::new(),
            applied: Vec::new(),
        }
    }

    fn is_separator(&self, token: u32) -> bool {
        is_separator(self.separator_mask, token)
    }

    fn capacity(&self) -> usize {
        self.policy.capacity()
    }

    fn append(&mut self, chunk: &[u32]) {
        for &token in chunk {
            self.slots.push(Slot { token, position: self.seen.len() });
            self.seen.push(token);
        }
    }

    /// Asks the planner about `incoming` tokens, checks its answer and applies it.
    fn plan_and_apply(&mut self, incoming: usize) -> Result<(), TestCaseError> {
        let tokens: Vec<u32> = self.slots.iter().map(|slot| slot.token).collect();
        let mask = self.separator_mask;
        let plan =
            self.policy.plan(self.initial_limit, self.blocks, &tokens, |token| is_separator(mask, token), incoming);
        let overflows = self.slots.len() + incoming > self.capacity();
        prop_assert_eq!(
            plan.is_some(),
            self.policy.evicts() && overflows,
            "plan must return Some iff L + incoming > c: L = {}, incoming = {}, c = {}",
            self.slots.len(),
            incoming,
            self.capacity()
        );
        let Some(plan) = plan else { return Ok(()) };
        self.check_compaction(&plan, incoming)?;
        let before = std::mem::take(&mut self.slots);
        self.slots = plan.keep.iter().map(|&index| before[index]).collect();
        self.blocks = plan.blocks;
        self.applied.push(Applied { before, incoming, initial_limit: self.initial_limit, plan });
        Ok(())
    }

    /// Checks one compaction against the rule, before it is applied.
    fn check_compaction(&self, plan: &Compaction, incoming: usize) -> Result<(), TestCaseError> {
        let before = &self.slots;
        let len = before.len();
        let capacity = self.capacity();
        let seen = self.seen.len();
        let keep = &plan.keep;

        // Order of kept slots preserved.
        prop_assert!(keep.windows(2).all(|pair| pair[0] < pair[1]), "keep not strictly increasing: {:?}", keep);
        prop_assert!(keep.last().is_none_or(|&last| last < len), "keep {:?} indexes past {} slots", keep, len);
        let kept: Vec<Slot> = keep.iter().map(|&index| before[index]).collect();

        // Room for the chunk, and progress.
        prop_assert!(
            kept.len() + incoming <= capacity,
            "kept {} + incoming {} > c = {}",
            kept.len(),
            incoming,
            capacity
        );
        prop_assert!(kept.len() < len, "a compaction must evict something ({} slots kept of {})", kept.len(), len);

        // Accounting.
        prop_assert_eq!(plan.dropped_separators + plan.dropped_other, len - kept.len(), "dropped counts");

        // Initial block: exactly the first min(a, T) tokens of the stream.
        let initial = plan.blocks.initial;
        prop_assert!(initial <= self.initial_limit, "initial block {} > limit {}", initial, self.initial_limit);
        prop_assert_eq!(initial, self.initial_limit.min(seen), "initial block size");
        prop_assert!(
            kept[..initial].iter().enumerate().all(|(position, slot)| slot.position == position),
            "initial block is not the start of the stream: {:?}",
            &kept[..initial]
        );

        let evicted: Vec<usize> = (0..len).filter(|index| keep.binary_search(index).is_err()).collect();
        match self.policy {
            CachePolicy::Dense { .. } => prop_assert!(false, "dense compacted"),
            CachePolicy::Streaming { .. } => {
                prop_assert_eq!(plan.blocks.separators, 0, "streaming has no separator block");
                prop_assert_eq!(plan.dropped_separators, 0, "streaming drops no separators");
                // initial ++ the most recent tokens that leave room for the chunk.
                let recent = capacity.saturating_sub(initial + incoming).min(len - initial);
                let expected: Vec<usize> = (0..initial).chain(len - recent..len).collect();
                prop_assert_eq!(keep, &expected, "streaming keeps the sinks and the most recent tokens");
            }
            CachePolicy::Sep(SepParams { separators: separator_limit, local, .. }) => {
                let separators = plan.blocks.separators;
                prop_assert!(separators <= separator_limit, "separator block {} > s = {}", separators, separator_limit);
                prop_assert!(initial + separators <= kept.len(), "blocks {:?} exceed {} kept", plan.blocks, kept.len());
                let block = &kept[initial..initial + separators];
                prop_assert!(
                    block.iter().all(|slot| self.is_separator(slot.token)),
                    "non-separator in the separator block: {:?}",
                    block
                );

                // The local window is the last w slots held before the compaction (all of them
                // after the separator block when fewer are held).
                let old_separators = self.blocks.separators.min(len - initial);
                let window = local.min(len - initial - old_separators);
                let local_start = len - window;
                prop_assert_eq!(&kept[initial + separators..], &before[local_start..], "local window");

                // Nothing kept that the rule drops: separator candidates are the old separator
                // block then the separators of the past window, and only the newest s stay.
                let candidates: Vec<usize> = (initial..initial + old_separators)
                    .chain(
                        (initial + old_separators..local_start).filter(|&index| self.is_separator(before[index].token)),
                    )
                    .collect();
                let newest = &candidates[candidates.len().saturating_sub(separator_limit)..];
                prop_assert_eq!(&keep[initial..initial + separators], newest, "separator block kept");
                for &index in keep {
                    prop_assert!(
                        index < initial || newest.contains(&index) || index >= local_start,
                        "slot {} kept although the rule drops it",
                        index
                    );
                }

                // Separators dropped are the separator ids evicted; everything else is "other".
                let evicted_separators =
                    evicted.iter().filter(|&&index| self.is_separator(before[index].token)).count();
                prop_assert_eq!(plan.dropped_separators, evicted_separators, "dropped separators");
                prop_assert_eq!(plan.dropped_separators, candidates.len() - newest.len(), "pushed-out candidates");
            }
        }
        Ok(())
    }

    /// Invariants of the held list between steps.
    fn check_state(&self, limit: usize) -> Result<(), TestCaseError> {
        let len = self.slots.len();
        prop_assert!(len <= limit, "L = {} > {}", len, limit);
        prop_assert!(
            self.slots.windows(2).all(|pair| pair[0].position < pair[1].position),
            "stream positions of held slots not strictly increasing"
        );
        prop_assert!(self.slots.iter().all(|slot| self.seen[slot.position] == slot.token), "slot lost its token");
        if self.applied.is_empty() {
            prop_assert_eq!(len, self.seen.len(), "before any compaction every token is held");
        }
        let initial = self.initial_limit.min(self.seen.len());
        prop_assert!(len >= initial, "initial block evicted");
        prop_assert!(
            self.slots[..initial].iter().enumerate().all(|(position, slot)| slot.position == position),
            "the first min(a, T) slots are not the first tokens of the stream"
        );
        let separators = self.blocks.separators;
        prop_assert!(separators <= self.policy.separator_limit(), "separator block over s");
        prop_assert!(
            self.slots[self.blocks.initial..self.blocks.initial + separators]
                .iter()
                .all(|slot| self.is_separator(slot.token)),
            "non-separator in the separator block"
        );
        Ok(())
    }
}

fn chunk_len(seed: usize, max_chunk: usize, timing: CompactionTiming) -> usize {
    match timing {
        CompactionTiming::BeforeAppend => 1 + seed % max_chunk,
        // Mostly single-token steps (generation), sometimes a prefill chunk.
        CompactionTiming::AfterStep => match seed % 4 {
            0 => 1 + (seed / 4) % max_chunk,
            _ => 1,
        },
    }
}

/// Runs a scenario, checking every step, and returns the finished simulation.
fn run(scenario: &Scenario) -> Result<Sim, TestCaseError> {
    let mut sim = Sim::new(scenario.policy.clone(), scenario.separator_mask);
    let capacity = sim.capacity();
    let mut cursor = 0;
    let mut chunk_index = 0;
    while cursor < scenario.tokens.len() {
        if let Some((at, limit)) = scenario.raise_initial {
            if at == chunk_index && sim.applied.is_empty() && limit > sim.initial_limit {
                sim.initial_limit = limit;
            }
        }
        let max_chunk = sim.policy.max_chunk(sim.initial_limit);
        prop_assert!(max_chunk >= 1, "max_chunk is 0");
        let seed = scenario.chunk_seeds[chunk_index % scenario.chunk_seeds.len()];
        let size = chunk_len(seed, max_chunk, scenario.timing).min(scenario.tokens.len() - cursor);
        let chunk = &scenario.tokens[cursor..cursor + size];
        match scenario.timing {
            CompactionTiming::BeforeAppend => {
                sim.plan_and_apply(size)?;
                sim.append(chunk);
                sim.check_state(capacity)?;
            }
            CompactionTiming::AfterStep => {
                sim.plan_and_apply(size - 1)?;
                sim.append(chunk);
                // Attention runs now, over at most c + 1 keys.
                sim.check_state(capacity + 1)?;
                sim.plan_and_apply(0)?;
                sim.check_state(capacity)?;
            }
        }
        cursor += size;
        chunk_index += 1;
    }
    Ok(sim)
}

/// SepCache sizes with w >= 1 and a + s + w < c <= MAX_CAPACITY.
fn sep_params() -> impl Strategy<Value = SepParams> {
    (2..=MAX_CAPACITY)
        .prop_flat_map(|capacity| (Just(capacity), 0..capacity - 1))
        .prop_flat_map(|(capacity, initial)| (Just(capacity), Just(initial), 1..capacity - initial))
        .prop_flat_map(|(capacity, initial, local)| {
            (Just(capacity), Just(initial), Just(local), 0..capacity - initial - local)
        })
        .prop_map(|(capacity, initial, local, separators)| SepParams { initial, separators, local, capacity })
}

/// StreamingLLM sizes with a < c <= MAX_CAPACITY.
fn streaming() -> impl Strategy<Value = CachePolicy> {
    (1..=MAX_CAPACITY)
        .prop_flat_map(|capacity| (Just(capacity), 0..capacity))
        .prop_map(|(capacity, initial)| CachePolicy::Streaming { initial, capacity })
}

/// The largest initial block `KvCache::protect_initial` accepts for a policy.
fn max_initial(policy: &CachePolicy) -> usize {
    match policy {
        CachePolicy::Sep(params) => params.capacity - 1 - params.separators - params.local,
        _ => policy.capacity() - 1,
    }
}

/// A policy with a raised initial block some of the time.
fn with_raise(
    policy: impl Strategy<Value = CachePolicy>,
) -> impl Strategy<Value = (CachePolicy, Option<(usize, usize)>)> {
    policy.prop_flat_map(|policy| {
        let range = policy.initial()..=max_initial(&policy);
        (Just(policy), prop::option::weighted(0.4, (0..12usize, range)))
    })
}

fn timing() -> impl Strategy<Value = CompactionTiming> {
    prop_oneof![Just(CompactionTiming::BeforeAppend), Just(CompactionTiming::AfterStep)]
}

fn scenario(
    policy: impl Strategy<Value = CachePolicy>,
    separator_mask: impl Strategy<Value = u8>,
) -> impl Strategy<Value = Scenario> {
    (
        with_raise(policy),
        timing(),
        separator_mask,
        prop::collection::vec(0..ALPHABET, 0..MAX_STREAM),
        prop::collection::vec(any::<usize>(), 1..24),
    )
        .prop_map(|((policy, raise_initial), timing, separator_mask, tokens, chunk_seeds)| Scenario {
            policy,
            raise_initial,
            timing,
            separator_mask,
            tokens,
            chunk_seeds,
        })
}

fn evicting_policy() -> impl Strategy<Value = CachePolicy> {
    prop_oneof![3 => sep_params().prop_map(CachePolicy::Sep), 1 => streaming()]
}

fn any_mask() -> impl Strategy<Value = u8> {
    0..=ALL_SEPARATORS
}

/// Valid configs in the domain the spec parser accepts: `seps` only applies to SepCache.
fn parseable_config() -> impl Strategy<Value = CacheConfig> {
    (valid_config(), any::<bool>()).prop_map(|(mut config, keep_rule)| {
        if !keep_rule || !matches!(config.policy, CachePolicy::Sep(_)) {
            config.separators = SeparatorRule::Vocabulary;
        }
        config
    })
}

/// Every config `CacheConfig::validate` accepts (for a context as large as its capacity).
fn valid_config() -> impl Strategy<Value = CacheConfig> {
    let policy = prop_oneof![
        (1..100_000usize).prop_map(|capacity| CachePolicy::Dense { capacity }),
        (1..100_000usize)
            .prop_flat_map(|capacity| (Just(capacity), 0..capacity))
            .prop_map(|(capacity, initial)| CachePolicy::Streaming { initial, capacity }),
        sep_params().prop_map(CachePolicy::Sep),
        // Large SepCache sizes as well.
        (0..5000usize, 0..5000usize, 1..5000usize, 1..5000usize).prop_map(|(initial, separators, local, extra)| {
            CachePolicy::Sep(SepParams { initial, separators, local, capacity: initial + separators + local + extra })
        }),
    ];
    (policy, any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(policy, abs, step, paper, q8)| {
        CacheConfig {
            policy,
            format: if q8 { KvFormat::Q8 } else { KvFormat::F16 },
            positions: if abs { RopePositions::Stream } else { RopePositions::CacheSlot },
            timing: if step { CompactionTiming::AfterStep } else { CompactionTiming::BeforeAppend },
            separators: if paper { SeparatorRule::Paper } else { SeparatorRule::Vocabulary },
        }
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// Every step of random SepCache and StreamingLLM conversations, both timings.
    #[test]
    fn planner_keeps_the_rule_at_every_step(scenario in scenario(evicting_policy(), any_mask())) {
        let sim = run(&scenario)?;
        // Streams longer than c always compact.
        if scenario.tokens.len() > scenario.policy.capacity() {
            prop_assert!(!sim.applied.is_empty(), "a stream longer than c never compacted");
        }
    }

    /// With a stream of separators only, every SepCache compaction leaves a full separator
    /// block (the first already does: its past window holds more than s separators).
    #[test]
    fn separator_only_stream_fills_the_separator_block(
        scenario in scenario(sep_params().prop_map(CachePolicy::Sep), Just(ALL_SEPARATORS))
    ) {
        let sim = run(&scenario)?;
        let s = scenario.policy.separator_limit();
        for applied in &sim.applied {
            prop_assert_eq!(applied.plan.blocks.separators, s, "separator block after {:?}", applied.plan);
        }
        if !sim.applied.is_empty() {
            prop_assert_eq!(sim.blocks.separators, s);
        }
    }

    /// With no separators, SepCache is "initial + last w".
    #[test]
    fn sep_without_separators_keeps_initial_and_last_w(
        scenario in scenario(sep_params().prop_map(CachePolicy::Sep), Just(0u8))
    ) {
        let sim = run(&scenario)?;
        let w = scenario.policy.local_limit();
        for Applied { before, initial_limit, plan, .. } in &sim.applied {
            let len = before.len();
            let initial = (*initial_limit).min(len);
            let expected: Vec<usize> = (0..initial).chain(len - w.min(len - initial)..len).collect();
            prop_assert_eq!(&plan.keep, &expected);
            prop_assert_eq!(plan.blocks.separators, 0);
            prop_assert_eq!(plan.dropped_separators, 0);
        }
    }

    /// A StreamingLLM compaction keeps exactly c - incoming slots: the sinks and the most recent.
    #[test]
    fn streaming_fills_up_to_the_chunk(scenario in scenario(streaming(), any_mask())) {
        let sim = run(&scenario)?;
        let c = scenario.policy.capacity();
        for Applied { incoming, plan, .. } in &sim.applied {
            prop_assert_eq!(plan.keep.len() + incoming, c);
        }
    }

    /// Dense never compacts, whatever is about to be appended, and its chunk is c.
    #[test]
    fn dense_never_compacts(
        capacity in 1..=MAX_CAPACITY,
        mask in any_mask(),
        tokens in prop::collection::vec(0..ALPHABET, 0..MAX_STREAM),
        seeds in prop::collection::vec(any::<usize>(), 1..24),
        initial_limit in 0..=MAX_CAPACITY,
    ) {
        let policy = CachePolicy::Dense { capacity };
        prop_assert!(!policy.evicts());
        prop_assert_eq!(policy.max_chunk(initial_limit), capacity);
        let mut sim = Sim::new(policy.clone(), mask);
        let mut cursor = 0;
        for (index, seed) in seeds.iter().cycle().enumerate() {
            let room = capacity.min(tokens.len()) - cursor;
            if room == 0 || index > 4 * MAX_STREAM {
                break;
            }
            let size = 1 + seed % room;
            let held: Vec<u32> = sim.slots.iter().map(|slot| slot.token).collect();
            for incoming in [0, size, capacity + 1, usize::MAX / 2] {
                let plan = policy.plan(initial_limit, sim.blocks, &held, |token| is_separator(mask, token), incoming);
                prop_assert_eq!(plan, None, "dense planned a compaction for incoming {}", incoming);
            }
            sim.append(&tokens[cursor..cursor + size]);
            cursor += size;
        }
        // A full dense cache still never compacts.
        let held: Vec<u32> = sim.slots.iter().map(|slot| slot.token).collect();
        prop_assert_eq!(policy.plan(initial_limit, sim.blocks, &held, |_| true, 1), None);
    }

    /// `max_chunk` is c - (a + s + w) for SepCache and c - a for StreamingLLM, at least 1,
    /// shrinks as a grows, and is tight: one token more can pass c right after a compaction.
    #[test]
    fn max_chunk_is_the_tight_bound((policy, raise) in with_raise(evicting_policy())) {
        let initial_limit = raise.map_or(policy.initial(), |(_, limit)| limit);
        let max_chunk = policy.max_chunk(initial_limit);
        let c = policy.capacity();
        match &policy {
            CachePolicy::Sep(params) => {
                prop_assert_eq!(max_chunk, c - (initial_limit + params.separators + params.local));
            }
            _ => prop_assert_eq!(max_chunk, c - initial_limit),
        }
        prop_assert!(max_chunk >= 1);
        for smaller in policy.initial()..initial_limit {
            prop_assert!(policy.max_chunk(smaller) >= max_chunk);
        }
        // Worst case: a full cache of separators; a chunk of max_chunk fits after the
        // compaction, one of max_chunk + 1 does not.
        let tokens = vec![0u32; c];
        for (incoming, fits) in [(max_chunk, true), (max_chunk + 1, false)] {
            let plan = policy.plan(initial_limit, Blocks::default(), &tokens, |_| true, incoming);
            let plan = plan.expect("a full cache compacts before any chunk");
            prop_assert_eq!(plan.keep.len() + incoming <= c, fits, "incoming {}: kept {}", incoming, plan.keep.len());
        }
    }

    /// `Display` writes a spec that `FromStr` parses back to the same config.
    #[test]
    fn specs_round_trip(config in parseable_config()) {
        let spec = config.to_string();
        prop_assert_eq!(spec.parse::<CacheConfig>(), Ok(config.clone()), "spec {}", spec);
        prop_assert_eq!(config.validate(config.policy.capacity()), Ok(()));
        prop_assert_eq!(CacheConfig::parse_for_model(&spec, config.policy.capacity()), Ok(config));
    }

    /// Every valid config prints a spec that parses, and the parsed config prints the same spec,
    /// including a dense or streaming config whose separator rule is `Paper` (public fields,
    /// accepted by `validate`; the rule means nothing there, so it is not printed).
    #[test]
    fn every_valid_config_prints_a_spec_that_parses_to_itself(config in valid_config()) {
        prop_assert_eq!(config.validate(config.policy.capacity()), Ok(()));
        let spec = config.to_string();
        let parsed = spec.parse::<CacheConfig>();
        prop_assert!(parsed.is_ok(), "spec {} does not parse: {:?}", spec, parsed);
        let reparsed = parsed.map(|parsed| parsed.to_string()).unwrap_or_default();
        prop_assert_eq!(reparsed, spec.clone(), "spec {}", spec);
    }
}
