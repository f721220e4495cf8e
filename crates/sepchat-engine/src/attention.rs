//! Attention over the f16 KV cache for decode steps and short chunks, in one of two
//! arithmetics (`Arithmetic`).
//!
//! `LlamaCpp` computes it the way llama.cpp's CPU flash-attention kernel does: llama.cpp stores
//! keys and values in f16, rounds the query to f16, and accumulates the softmax-weighted values
//! in f16 with an online softmax. Those roundings move logits by a few hundredths, enough to flip
//! a greedy choice between two near-equal tokens. Matching llama.cpp's arithmetic makes its
//! greedy outputs and logits a usable golden (tests/reference.rs checks them bit for bit).
//!
//! `Fast`, the app's default, keeps the query and the accumulators in f32. At a long context
//! this kernel is a large part of a decode step, and most of the exact kernel's time went to
//! ggml's f16 accumulator (two conversions per multiply-add), its per-slot rescale and the C
//! library's `expf`: the fast kernel takes 2.3x less time per slot when the rows sit in the
//! core's caches (AVX-512 and AVX2 alike; `attention_kernel_timings`), and is more precise, not
//! less (`fast_kernels_agree_with_attention_in_f64`). Its greedy text can still part from
//! llama.cpp's flash-attention output at a near-tie, as llama.cpp's own output does with flash
//! attention off (docs/BENCHMARKS.md).
//!
//! Both never materialise the score matrix or repeated K/V heads, and read the cache in place
//! (no copy per step), which is what a long conversation needs.
//!
//! An 8-bit cache (`kv=q8`, see `kv_format`) is read by the fast kernels with the same
//! arithmetic: each row is widened from its bytes, its scale applied to its score and its
//! weight. llama.cpp's rounding is defined for f16 rows only, so such a cache always runs `Fast`.

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::kv_format::KvRows;

/// Causal attention for `queries` (`[n_head, n_new, head_dim]`, f32, rotated) against the cache
/// views `keys` and `values` (`[n_kv_head, n_held + n_new, head_dim]`, as stored). Query `i` of
/// the chunk sees every held slot and chunk tokens `0..=i`. Returns `[n_new, n_head * head_dim]`.
pub(crate) fn cpu_flash_attention(
    queries: &Tensor,
    keys: &KvRows,
    values: &KvRows,
    scale: f32,
    arithmetic: Arithmetic,
) -> Result<Tensor> {
    let (n_head, n_new, head_dim) = queries.dims3()?;
    let queries = queries.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let call = Call { queries: &queries, n_new, n_head, head_dim, scale };
    let output = match (keys, values) {
        (KvRows::F16(keys), KvRows::F16(values)) => {
            let (key_guard, value_guard) = (keys.storage_and_layout().0, values.storage_and_layout().0);
            let group: GroupKernel<f16, f16> = match arithmetic {
                Arithmetic::LlamaCpp => attend_group,
                Arithmetic::Fast => attend_group_fast::<f16, f16>,
            };
            call.run(
                CacheData::new(keys, DType::F16, element_slice(&key_guard)?, None)?,
                CacheData::new(values, DType::F16, element_slice(&value_guard)?, None)?,
                group,
            )?
        }
        (KvRows::Q8 { data: keys, scales: key_scales }, KvRows::Q8 { data: values, scales: value_scales }) => {
            let (key_guard, value_guard) = (keys.storage_and_layout().0, values.storage_and_layout().0);
            let (key_scale_guard, value_scale_guard) =
                (key_scales.storage_and_layout().0, value_scales.storage_and_layout().0);
            call.run(
                CacheData::new(keys, DType::U8, element_slice(&key_guard)?, Some((key_scales, &key_scale_guard)))?,
                CacheData::new(
                    values,
                    DType::U8,
                    element_slice(&value_guard)?,
                    Some((value_scales, &value_scale_guard)),
                )?,
                attend_group_fast::<u8, u8>,
            )?
        }
        _ => return Err(EngineError::Candle(candle_core::Error::Msg("keys and values in two formats".to_string()))),
    };
    Ok(Tensor::from_vec(output, (n_new, n_head * head_dim), &Device::Cpu)?)
}

/// What one `cpu_flash_attention` call computes, whatever the cache's format.
struct Call<'a> {
    queries: &'a [f32],
    n_new: usize,
    n_head: usize,
    head_dim: usize,
    scale: f32,
}

impl Call<'_> {
    fn run<K: CacheElement, V: CacheElement>(
        &self,
        keys: CacheData<'_, K>,
        values: CacheData<'_, V>,
        group: GroupKernel<K, V>,
    ) -> Result<Vec<f32>> {
        let (n_kv_head, n_keys) = (keys.n_kv_head, keys.slots);
        let attention = Attention {
            queries: self.queries,
            n_new: self.n_new,
            n_head: self.n_head,
            heads_per_kv: self.n_head / n_kv_head,
            head_dim: self.head_dim,
            n_held: n_keys - self.n_new,
            keys,
            values,
            scale: self.scale,
            kernel: Kernel::detect(self.head_dim),
            group,
            max_group: MAX_GROUP,
        };
        #[cfg(test)]
        let attention = match *tests::FORCED.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some((kernel, max_group)) => Attention { kernel, max_group, ..attention },
            None => attention,
        };
        Ok(attention.run(rayon::current_num_threads()))
    }
}

/// A value type the cache stores: f16, or `u8` holding the two's-complement byte of an 8-bit
/// row (candle has no i8 tensors; the SIMD kernels sign-extend the bytes as they load them).
pub(crate) trait CacheElement: Copy + Send + Sync + 'static {
    /// Whether rows come with a scale (`value = scale x element`).
    const QUANTIZED: bool;
    fn widen(self) -> f32;
}

impl CacheElement for f16 {
    const QUANTIZED: bool = false;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl CacheElement for u8 {
    const QUANTIZED: bool = true;
    fn widen(self) -> f32 {
        f32::from(self as i8)
    }
}

/// The kernel that attends one query row of a group of heads (`attend_group`,
/// `attend_group_fast`).
type GroupKernel<K, V> = fn(Kernel, &[&[f32]], &Rows<'_, K, V>, f32, &mut [f32]);

/// One cache view's elements, where its rows start, and its row scales when quantized.
struct CacheData<'a, T> {
    rows: CacheRows,
    data: &'a [T],
    scales: ScaleRows<'a>,
    n_kv_head: usize,
    slots: usize,
}

impl<'a, T> CacheData<'a, T> {
    fn new(view: &Tensor, dtype: DType, data: &'a [T], scales: Option<(&Tensor, &'a Storage)>) -> Result<Self> {
        let (n_kv_head, slots, _) = view.dims3()?;
        let scales = match scales {
            Some((tensor, storage)) => ScaleRows::new(tensor, element_slice(storage)?)?,
            None => ScaleRows::NONE,
        };
        Ok(Self { rows: CacheRows::new(view, dtype)?, data, scales, n_kv_head, slots })
    }
}

/// How the attention kernel rounds: see the module's documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arithmetic {
    /// f32 query, scores, weights and accumulators: the fastest, and the app's default.
    #[default]
    Fast,
    /// llama.cpp's CPU flash-attention kernel rounding for rounding (f16 query, f16 value
    /// accumulator, online softmax slot by slot, the C library's `expf`): reproduces llama.cpp's
    /// logits bit for bit, for checks against its goldens. Defined for f16 caches: an 8-bit
    /// cache (`kv=q8`) runs `Fast` whatever this says.
    LlamaCpp,
}

impl Arithmetic {
    /// The name `FromStr` reads: `fast` or `llama-cpp`.
    pub fn name(self) -> &'static str {
        match self {
            Arithmetic::Fast => "fast",
            Arithmetic::LlamaCpp => "llama-cpp",
        }
    }
}

impl std::str::FromStr for Arithmetic {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        match text {
            "fast" => Ok(Arithmetic::Fast),
            "llama-cpp" => Ok(Arithmetic::LlamaCpp),
            other => Err(format!("unknown attention arithmetic '{other}': expected fast or llama-cpp")),
        }
    }
}

/// At most this many query heads share one pass over their KV head's rows (see `attend_group`):
/// the 3 of SmolLM2-135M's grouped-query attention and a little more, while their accumulators
/// (4 AVX-512 registers each at head size 64) still fit in the register file.
const MAX_GROUP: usize = 4;

/// One attention call: the queries, the cache rows they read, and the kernel to run.
struct Attention<'a, K, V> {
    queries: &'a [f32],
    n_new: usize,
    n_head: usize,
    heads_per_kv: usize,
    head_dim: usize,
    n_held: usize,
    keys: CacheData<'a, K>,
    values: CacheData<'a, V>,
    scale: f32,
    kernel: Kernel,
    /// The arithmetic's kernel for one group of heads.
    group: GroupKernel<K, V>,
    /// At most this many heads to a kernel call: `MAX_GROUP`, or 1 to time heads one at a time.
    max_group: usize,
}

impl<K: CacheElement, V: CacheElement> Attention<'_, K, V> {
    /// The output, `[n_new, n_head, head_dim]`, computed by rayon tasks that each own a run of
    /// (query row, head) units in that order (see `task_bounds`).
    fn run(&self, threads: usize) -> Vec<f32> {
        let head_dim = self.head_dim;
        let mut output = vec![0f32; self.n_new * self.n_head * head_dim];
        let group = if self.max_group > 1 { self.heads_per_kv } else { 1 };
        let bounds = task_bounds(self.n_new, self.n_head, group, threads);
        let mut tasks = Vec::with_capacity(bounds.len().saturating_sub(1));
        let mut rest = output.as_mut_slice();
        for range in bounds.windows(2) {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut((range[1] - range[0]) * head_dim);
            tasks.push((range[0], piece));
            rest = tail;
        }
        tasks.into_par_iter().for_each(|(first, out)| self.attend_units(first, out));
        output
    }

    /// Units `first..first + out.len() / head_dim`, consecutive heads of one query row and KV
    /// head taken together (at most `max_group` at a time) so they share each cache row's loads.
    fn attend_units(&self, first: usize, out: &mut [f32]) {
        let (n_head, head_dim) = (self.n_head, self.head_dim);
        let end = first + out.len() / head_dim;
        let mut unit = first;
        while unit < end {
            let (row, head) = (unit / n_head, unit % n_head);
            let kv_head = head / self.heads_per_kv;
            let group_end = (row * n_head + (kv_head + 1) * self.heads_per_kv).min(end).min(unit + self.max_group);
            let mut queries: [&[f32]; MAX_GROUP] = [&[]; MAX_GROUP];
            for (offset, query) in queries[..group_end - unit].iter_mut().enumerate() {
                *query = &self.queries[((head + offset) * self.n_new + row) * head_dim..][..head_dim];
            }
            let rows = Rows {
                key_rows: &self.keys.rows,
                key_data: self.keys.data,
                key_scales: self.keys.scales,
                value_rows: &self.values.rows,
                value_data: self.values.data,
                value_scales: self.values.scales,
                kv_head,
                visible: self.n_held + row + 1,
            };
            let out = &mut out[(unit - first) * head_dim..(group_end - first) * head_dim];
            (self.group)(self.kernel, &queries[..group_end - unit], &rows, self.scale, out);
            unit = group_end;
        }
    }
}

/// Where the rayon tasks of one call begin and end, in (query row, head) units, row-major;
/// `group` heads share a KV head.
///
/// Heads that share a KV head are cheaper together (one load and f16 widening of each cache row
/// for all of them), but fewer, bigger tasks balance worse over the threads. So: one task per
/// (query row, KV head) when that still gives every thread at least two tasks (one thread; or
/// chunks of several rows, whose rows differ in length); otherwise (a decode step on two or
/// more threads: 3 KV heads) one task per thread, the units split evenly, each task grouping
/// what it can. With two threads that is heads 0-3 and 4-8: groups (0 1 2) (3) and (4 5) (6 7 8),
/// about the same work each, where three tasks would leave one thread idle half of the call.
/// More threads than units, or `group` 1: one unit per task, as before grouping.
fn task_bounds(n_new: usize, n_head: usize, group: usize, threads: usize) -> Vec<usize> {
    let units = n_new * n_head;
    let groups = units / group.max(1);
    if groups >= 2 * threads {
        (0..=groups).map(|index| index * group).collect()
    } else {
        let tasks = threads.min(units).max(1);
        (0..=tasks).map(|task| task * units / tasks).collect()
    }
}

/// Where row `slot` of head `kv_head` starts in a cache view's storage.
#[derive(Clone, Copy)]
struct CacheRows {
    offset: usize,
    head_stride: usize,
    slot_stride: usize,
}

impl CacheRows {
    fn new(view: &Tensor, dtype: DType) -> Result<Self> {
        let layout = view.layout();
        let stride = layout.stride();
        if view.dtype() != dtype || stride.len() != 3 || stride[2] != 1 {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "attention expects a {dtype:?} cache view with contiguous rows, got {:?} strides {stride:?}",
                view.dtype()
            ))));
        }
        Ok(Self { offset: layout.start_offset(), head_stride: stride[0], slot_stride: stride[1] })
    }

    fn start(&self, kv_head: usize, slot: usize) -> usize {
        self.offset + kv_head * self.head_stride + slot * self.slot_stride
    }
}

/// The f32 scale of every row of a quantized cache view (`[n_kv_head, slots]`); `NONE` for f16.
#[derive(Clone, Copy)]
struct ScaleRows<'a> {
    data: &'a [f32],
    offset: usize,
    head_stride: usize,
    slot_stride: usize,
}

impl<'a> ScaleRows<'a> {
    const NONE: ScaleRows<'static> = ScaleRows { data: &[], offset: 0, head_stride: 0, slot_stride: 0 };

    fn new(view: &Tensor, data: &'a [f32]) -> Result<Self> {
        let layout = view.layout();
        let stride = layout.stride();
        if view.dtype() != DType::F32 || stride.len() != 2 {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "attention expects f32 row scales, got {:?} strides {stride:?}",
                view.dtype()
            ))));
        }
        Ok(Self { data, offset: layout.start_offset(), head_stride: stride[0], slot_stride: stride[1] })
    }

    /// `slot`'s scale, or 1 where the rows are not `quantized` (f16 rows hold their values).
    fn get(&self, quantized: bool, kv_head: usize, slot: usize) -> f32 {
        if quantized {
            self.data[self.offset + kv_head * self.head_stride + slot * self.slot_stride]
        } else {
            1.0
        }
    }

    /// The scales of slots `first..first + count`, and 1 past them (all 1 where the rows are
    /// not `quantized`): a block as the kernels take it.
    fn block<const N: usize>(&self, quantized: bool, kv_head: usize, first: usize, count: usize) -> [f32; N] {
        let mut scales = [1f32; N];
        if quantized {
            self.read(kv_head, first, &mut scales[..count]);
        }
        scales
    }

    /// The scales of slots `first..first + out.len()` into `out`: one copy where they lie side
    /// by side, as a cache's do (the kernels take them a block at a time).
    fn read(&self, kv_head: usize, first: usize, out: &mut [f32]) {
        let start = self.offset + kv_head * self.head_stride + first * self.slot_stride;
        if self.slot_stride == 1 {
            out.copy_from_slice(&self.data[start..start + out.len()]);
        } else {
            for (index, out) in out.iter_mut().enumerate() {
                *out = self.data[start + index * self.slot_stride];
            }
        }
    }
}

fn element_slice<T: candle_core::WithDType>(storage: &Storage) -> Result<&[T]> {
    match storage {
        Storage::Cpu(cpu) => Ok(cpu.as_slice::<T>()?),
        _ => Err(EngineError::Candle(candle_core::Error::Msg("cpu attention called on a device tensor".to_string()))),
    }
}

/// Which implementation of the row kernels runs: for `Arithmetic::LlamaCpp` all give the same bits,
/// for `Arithmetic::Fast` each its own (all within what the tests bound of attention in f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `Avx512` where the CPU also has AVX-512 BW and VNNI: for f16 rows the same kernels, for
    /// 8-bit rows one in integer arithmetic (`x86::attend_group_q8_vnni`).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The fastest the CPU runs for this head size: at long contexts this loop is a large part
    /// of a decode step.
    fn detect(head_dim: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        if x86::supported(head_dim) {
            return if x86::has_avx512_vnni() {
                Kernel::Avx512Vnni
            } else if x86::has_avx512() {
                Kernel::Avx512
            } else {
                Kernel::Avx2
            };
        }
        let _ = head_dim;
        Kernel::Portable
    }
}

/// llama.cpp's `flash_attn_ext_f16_one_chunk` for one query row of `queries.len()` heads that
/// share the KV head of `rows` (one `out` row of `head_dim` per head): f16 query, f32 dot
/// products, online softmax in f32, values accumulated in f16. The SIMD kernels handle the heads
/// together, loading and widening each key and value row once for all of them, while each head
/// goes through exactly the operations, in the order, of the portable kernel run for it alone
/// (which tests check bit for bit).
fn attend_group(kernel: Kernel, queries: &[&[f32]], rows: &Rows<'_>, scale: f32, out: &mut [f32]) {
    let head_dim = out.len() / queries.len().max(1);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512 | Kernel::Avx512Vnni => {
            // SAFETY: `Kernel::detect` chose these only where `x86::supported` confirmed the CPU
            // features (AVX-512F too for `Avx512`) and the head size; the kernels read rows
            // `0..visible` of `kv_head` through `Rows::key`/`Rows::value`, which bound-check, and
            // fall back to the portable kernel for group sizes they are not built for.
            let done = unsafe {
                if kernel != Kernel::Avx2 {
                    x86::attend_group_avx512(queries, rows, scale, out)
                } else {
                    x86::attend_group_avx2(queries, rows, scale, out)
                }
            };
            if done {
                return;
            }
        }
        Kernel::Portable => {}
    }
    for (query, out) in queries.iter().zip(out.chunks_exact_mut(head_dim)) {
        attend_one_portable(query, rows, scale, out);
    }
}

/// `attend_group` in `Arithmetic::Fast`, with the fast kernel for AVX-512 or AVX2 (the portable
/// one per head for a group size the SIMD kernels are not built for). Each head's bits do not
/// depend on the group it runs in, but differ from kernel to kernel.
fn attend_group_fast<K: CacheElement, V: CacheElement>(
    kernel: Kernel,
    queries: &[&[f32]],
    rows: &Rows<'_, K, V>,
    scale: f32,
    out: &mut [f32],
) {
    let head_dim = out.len() / queries.len().max(1);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni if K::QUANTIZED => {
            // SAFETY: as in `attend_group`: `Kernel::detect` confirmed AVX-512F, BW and VNNI and
            // the head size; the kernel itself declines f16 rows.
            if unsafe { x86::attend_group_q8_vnni::<K, V>(queries, rows, scale, out) } {
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Vnni => {
            // SAFETY: as in `attend_group`: `Kernel::detect` confirmed AVX-512F and the head size.
            if unsafe { x86::attend_group_fast_avx512::<K, V>(queries, rows, scale, out) } {
                return;
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: as in `attend_group`: `Kernel::detect` confirmed AVX2, FMA, F16C and the
            // head size.
            if unsafe { x86::attend_group_fast_avx2::<K, V>(queries, rows, scale, out) } {
                return;
            }
        }
        Kernel::Portable => {}
    }
    for (query, out) in queries.iter().zip(out.chunks_exact_mut(head_dim)) {
        attend_one_fast_portable(query, rows, scale, out);
    }
}

/// The cache rows one query row attends to: f16 rows (`K` = `V` = f16, the defaults), or
/// quantized ones with their scales.
struct Rows<'a, K = f16, V = f16> {
    key_rows: &'a CacheRows,
    key_data: &'a [K],
    key_scales: ScaleRows<'a>,
    value_rows: &'a CacheRows,
    value_data: &'a [V],
    value_scales: ScaleRows<'a>,
    kv_head: usize,
    visible: usize,
}

impl<K: CacheElement, V: CacheElement> Rows<'_, K, V> {
    fn key(&self, slot: usize, head_dim: usize) -> &[K] {
        &self.key_data[self.key_rows.start(self.kv_head, slot)..][..head_dim]
    }

    fn value(&self, slot: usize, head_dim: usize) -> &[V] {
        &self.value_data[self.value_rows.start(self.kv_head, slot)..][..head_dim]
    }

    /// The factor `slot`'s key elements are multiplied by (1 for f16 rows).
    fn key_scale(&self, slot: usize) -> f32 {
        self.key_scales.get(K::QUANTIZED, self.kv_head, slot)
    }

    /// The key scales of slots `first..first + count`, and 1 past them (all 1 for f16 rows).
    fn key_scales<const N: usize>(&self, first: usize, count: usize) -> [f32; N] {
        self.key_scales.block(K::QUANTIZED, self.kv_head, first, count)
    }

    /// The factor `slot`'s value elements are multiplied by (1 for f16 rows).
    fn value_scale(&self, slot: usize) -> f32 {
        self.value_scales.get(V::QUANTIZED, self.kv_head, slot)
    }

    /// The value scales of slots `first..first + count`, and 1 past them (all 1 for f16 rows).
    fn value_scales<const N: usize>(&self, first: usize, count: usize) -> [f32; N] {
        self.value_scales.block(V::QUANTIZED, self.kv_head, first, count)
    }

    /// Where `slot`'s key row starts in `key_data` (bounds unchecked).
    fn key_start(&self, slot: usize) -> usize {
        self.key_rows.start(self.kv_head, slot)
    }

    /// Where `slot`'s value row starts in `value_data` (bounds unchecked).
    fn value_start(&self, slot: usize) -> usize {
        self.value_rows.start(self.kv_head, slot)
    }
}

/// `query x scale` in 8 bits, as an 8-bit key row is rounded (`kv_format::q8_row`): its
/// elements into `bytes`, and its scale and the sum of its elements returned. The AVX-512 VNNI
/// kernel dots these with 8-bit keys in integers. Head sizes up to 256, as the SIMD kernels'.
fn query_in_8_bits(query: &[f32], scale: f32, bytes: &mut [i8]) -> (f32, i32) {
    // On the stack: the kernel calls this for every head of every decode step.
    let mut scaled = [0f32; 256];
    let scaled = &mut scaled[..query.len()];
    for (scaled, &query) in scaled.iter_mut().zip(query) {
        *scaled = query * scale;
    }
    let (step, elements) = crate::kv_format::q8_row(scaled);
    let mut sum = 0;
    for (byte, element) in bytes.iter_mut().zip(elements) {
        *byte = element;
        sum += i32::from(element);
    }
    (step, sum)
}

fn attend_one_portable(query: &[f32], rows: &Rows<'_>, scale: f32, out: &mut [f32]) {
    let head_dim = query.len();
    let query: Vec<f32> = query.iter().map(|&q| f16::from_f32(q).to_f32()).collect();
    let mut accumulated = vec![f16::ZERO; head_dim];
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    for slot in 0..rows.visible {
        let key = rows.key(slot, head_dim);
        let value = rows.value(slot, head_dim);
        let score = crate::ggml_exact::dot_f16(&query, key) * scale;
        let mut max_scale = 1f32;
        let mut weight = 1f32;
        if score > running_max {
            let previous = running_max;
            running_max = score;
            max_scale = (previous - running_max).exp();
            for acc in accumulated.iter_mut() {
                *acc = f16::from_f32(acc.to_f32() * max_scale);
            }
        } else {
            weight = (score - running_max).exp();
        }
        for (acc, &v) in accumulated.iter_mut().zip(value) {
            *acc = f16::from_f32(v.to_f32().mul_add(weight, acc.to_f32()));
        }
        // `S = S*ms + vs` in ggml, contracted to one fused multiply-add by the compiler.
        running_sum = running_sum.mul_add(max_scale, weight);
    }
    let inverse_sum = if running_sum == 0.0 { 0.0 } else { 1.0 / running_sum };
    for (out, acc) in out.iter_mut().zip(&accumulated) {
        *out = acc.to_f32() * inverse_sum;
    }
}

/// The fast arithmetic one slot at a time, in f32: the online softmax with the scaled query.
fn attend_one_fast_portable<K: CacheElement, V: CacheElement>(
    query: &[f32],
    rows: &Rows<'_, K, V>,
    scale: f32,
    out: &mut [f32],
) {
    let head_dim = query.len();
    let query: Vec<f32> = query.iter().map(|&q| q * scale).collect();
    let mut accumulated = vec![0f32; head_dim];
    let mut running_max = f32::NEG_INFINITY;
    let mut running_sum = 0f32;
    for slot in 0..rows.visible {
        let key = rows.key(slot, head_dim);
        let dot: f32 = query.iter().zip(key).map(|(&q, &k)| q * k.widen()).sum();
        let score = dot * rows.key_scale(slot);
        if score > running_max {
            let factor = (running_max - score).exp();
            running_max = score;
            running_sum *= factor;
            for acc in accumulated.iter_mut() {
                *acc *= factor;
            }
        }
        let weight = (score - running_max).exp();
        running_sum += weight;
        let scaled_weight = weight * rows.value_scale(slot);
        for (acc, &v) in accumulated.iter_mut().zip(rows.value(slot, head_dim)) {
            *acc = v.widen().mul_add(scaled_weight, *acc);
        }
    }
    let inverse_sum = if running_sum == 0.0 { 0.0 } else { 1.0 / running_sum };
    for (out, acc) in out.iter_mut().zip(&accumulated) {
        *out = acc * inverse_sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The row kernel with AVX2, FMA and F16C (8 lanes) or AVX-512 (16 lanes): the same
    //! roundings in the same order as the portable kernel (and ggml), for up to `MAX_GROUP`
    //! heads at once. Per lane they do the same operations; the AVX-512 one also takes the
    //! softmax bookkeeping sixteen slots at a time (`fill_weights_avx512`). The fast kernel
    //! (`Arithmetic::Fast`) comes in both widths too (`fast_avx2`, `fast_avx512`).

    use std::arch::x86_64::*;

    use half::f16;

    use super::{CacheElement, Rows, MAX_GROUP};

    /// Head sizes the kernels handle: whole 64-element blocks of ggml's f16 dot product, and
    /// at most `MAX_HEAD_DIM` accumulator lanes per head kept in registers or on the stack.
    const MAX_HEAD_DIM: usize = 256;

    /// Slots per block of the kernels' passes (scores, exponentials, values).
    const BLOCK: usize = 32;

    pub(super) fn supported(head_dim: usize) -> bool {
        head_dim > 0
            && head_dim.is_multiple_of(64)
            && head_dim <= MAX_HEAD_DIM
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }

    pub(super) fn has_avx512() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }

    /// Instantiates `$kernel::<G, DIM>` for the group size and head size at hand, so the loops
    /// over heads and over a row's vectors have constant trip counts: unrolled, with queries and
    /// accumulators in registers where they fit. `false` for a shape not listed (the caller then
    /// runs the portable kernel).
    macro_rules! by_shape {
        ($kernel:ident, $queries:expr, $rows:expr, $scale:expr, $out:expr) => {
            by_shape!($kernel[], $queries, $rows, $scale, $out)
        };
        ($kernel:ident [$($element:ty),*], $queries:expr, $rows:expr, $scale:expr, $out:expr) => {{
            let shape = ($queries.len(), $queries.first().map_or(0, |query| query.len()));
            match shape {
                (1, 64) => $kernel::<1, 64 $(, $element)*>($queries, $rows, $scale, $out),
                (2, 64) => $kernel::<2, 64 $(, $element)*>($queries, $rows, $scale, $out),
                (3, 64) => $kernel::<3, 64 $(, $element)*>($queries, $rows, $scale, $out),
                (4, 64) => $kernel::<4, 64 $(, $element)*>($queries, $rows, $scale, $out),
                (1, 128) => $kernel::<1, 128 $(, $element)*>($queries, $rows, $scale, $out),
                (2, 128) => $kernel::<2, 128 $(, $element)*>($queries, $rows, $scale, $out),
                (3, 128) => $kernel::<3, 128 $(, $element)*>($queries, $rows, $scale, $out),
                (4, 128) => $kernel::<4, 128 $(, $element)*>($queries, $rows, $scale, $out),
                (1, 192) => $kernel::<1, 192 $(, $element)*>($queries, $rows, $scale, $out),
                (2, 192) => $kernel::<2, 192 $(, $element)*>($queries, $rows, $scale, $out),
                (3, 192) => $kernel::<3, 192 $(, $element)*>($queries, $rows, $scale, $out),
                (4, 192) => $kernel::<4, 192 $(, $element)*>($queries, $rows, $scale, $out),
                (1, 256) => $kernel::<1, 256 $(, $element)*>($queries, $rows, $scale, $out),
                (2, 256) => $kernel::<2, 256 $(, $element)*>($queries, $rows, $scale, $out),
                (3, 256) => $kernel::<3, 256 $(, $element)*>($queries, $rows, $scale, $out),
                (4, 256) => $kernel::<4, 256 $(, $element)*>($queries, $rows, $scale, $out),
                _ => return false,
            }
            true
        }};
    }

    /// The AVX2 kernel for `queries.len()` heads of `rows`'s KV head; `false` (nothing written)
    /// for a shape it is not built for.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_group_avx2(queries: &[&[f32]], rows: &Rows<'_>, scale: f32, out: &mut [f32]) -> bool {
        by_shape!(group_avx2, queries, rows, scale, out)
    }

    /// The AVX-512 kernel, as `attend_group_avx2`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn attend_group_avx512(queries: &[&[f32]], rows: &Rows<'_>, scale: f32, out: &mut [f32]) -> bool {
        by_shape!(group_avx512, queries, rows, scale, out)
    }

    /// A query rounded to f16 and back, as ggml converts it once per row.
    fn rounded_query(query: &[f32]) -> [f32; MAX_HEAD_DIM] {
        let mut rounded = [0f32; MAX_HEAD_DIM];
        for (rounded, &q) in rounded.iter_mut().zip(query) {
            *rounded = f16::from_f32(q).to_f32();
        }
        rounded
    }

    /// One head's online-softmax factors for the slots of a block.
    struct BlockWeights {
        /// Bit `i`: the running maximum rose at slot `i` (the accumulator is rescaled first).
        rose: u32,
        /// ggml's `ms`: what the accumulator and the sum are scaled by before the slot is added.
        max_scale: [f32; BLOCK],
        /// ggml's `vs`: the slot's weight.
        weight: [f32; BLOCK],
    }

    const _: () = assert!(BLOCK <= u32::BITS as usize);

    impl BlockWeights {
        fn new() -> Self {
            Self { rose: 0, max_scale: [1.0; BLOCK], weight: [1.0; BLOCK] }
        }

        fn rose(&self, slot: usize) -> bool {
            self.rose >> slot & 1 == 1
        }

        /// The factors for the first `count` `scores` of every head, advancing `running_max`.
        /// Per slot ggml takes one exponential: of (previous max - new max) where the maximum
        /// rose (the rescale factor; the slot's weight is then 1), else of (score - max). The
        /// exponentials depend on each other only through the running maximum, so they are taken
        /// together, eight lanes at a time (`exp_block`). The heads' running maxima are
        /// independent chains, interleaved here slot by slot.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn fill<const G: usize>(
            weights: &mut [BlockWeights; G],
            scores: &[[f32; BLOCK]; G],
            count: usize,
            running_max: &mut [f32; G],
        ) {
            let mut exponents = [[0f32; BLOCK]; G];
            for weights in weights.iter_mut() {
                weights.rose = 0;
            }
            for slot in 0..count {
                for head in 0..G {
                    let (score, max) = (scores[head][slot], &mut running_max[head]);
                    if score > *max {
                        exponents[head][slot] = *max - score;
                        weights[head].rose |= 1 << slot;
                        *max = score;
                    } else {
                        exponents[head][slot] = score - *max;
                    }
                }
            }
            for (weights, exponents) in weights.iter_mut().zip(&exponents) {
                let mut exps = [0f32; BLOCK];
                exp_block(&exponents[..count], &mut exps[..count]);
                for (slot, &e) in exps[..count].iter().enumerate() {
                    (weights.max_scale[slot], weights.weight[slot]) =
                        if weights.rose(slot) { (e, 1f32) } else { (1f32, e) };
                }
            }
        }
    }

    /// `out[i] = exp(x[i])` exactly as the C library's `expf` computes it, eight at a time where
    /// the vector version applies, so the kernels stay bit-identical to the portable one (and to
    /// llama.cpp, which calls `expf`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn exp_block(x: &[f32], out: &mut [f32]) {
        let mut start = 0;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        while start + 8 <= x.len() {
            let lanes = &x[start..start + 8];
            match super::glibc_expf::exp8(lanes) {
                Some(e) => out[start..start + 8].copy_from_slice(&e),
                None => {
                    for (o, &v) in out[start..start + 8].iter_mut().zip(lanes) {
                        *o = v.exp();
                    }
                }
            }
            start += 8;
        }
        for (o, &v) in out[start..].iter_mut().zip(&x[start..]) {
            *o = v.exp();
        }
    }

    /// e^x for sixteen lanes exactly as the C library's `expf`: `glibc_expf::exp16` where every
    /// lane is in its range, else the C library lane by lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn exp_512(x: __m512, table: &ExpTable) -> __m512 {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if super::glibc_expf::in_range_16(x) {
            return super::glibc_expf::exp16(x, table);
        }
        let _ = table;
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), x);
        for lane in &mut lanes {
            *lane = lane.exp();
        }
        _mm512_loadu_ps(lanes.as_ptr())
    }

    /// What `exp_512` reads its table from, loaded once per call of the kernel.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    type ExpTable = [__m512i; 4];
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    type ExpTable = ();

    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn exp_table() -> ExpTable {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        return super::glibc_expf::table_512();
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        ()
    }

    /// `BlockWeights::fill` with AVX-512, sixteen slots of a head at a time: the running
    /// maximum before each slot as a prefix scan, the exponentials sixteen lanes at a time.
    /// The scan's step keeps the left value unless the right one is greater, as the loop does;
    /// that step is associative (it picks the first of the greatest values), so the scan gives
    /// every slot the maximum the loop holds before it, bit for bit, signs of zeros included.
    /// A NaN score never becomes the maximum in the loop (`>` is false), so the scan reads it as
    /// -inf; its exponent is still NaN, and `exp_512` leaves that to the C library.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn fill_weights_avx512<const G: usize>(
        weights: &mut [BlockWeights; G],
        scores: &[[f32; BLOCK]; G],
        count: usize,
        running_max: &mut [f32; G],
    ) {
        /// One step of the scan: lane i takes lane i - (16 - SHIFT) unless lane i is greater.
        #[inline]
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        unsafe fn step<const SHIFT: i32>(x: __m512, fill: __m512) -> __m512 {
            let left =
                _mm512_castsi512_ps(_mm512_alignr_epi32::<SHIFT>(_mm512_castps_si512(x), _mm512_castps_si512(fill)));
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, left), left, x)
        }
        let negative_infinity = _mm512_set1_ps(f32::NEG_INFINITY);
        let one = _mm512_set1_ps(1.0);
        let table = exp_table();
        for ((weights, scores), running_max) in weights.iter_mut().zip(scores).zip(running_max.iter_mut()) {
            weights.rose = 0;
            let mut max = _mm512_set1_ps(*running_max);
            for start in (0..count).step_by(16) {
                let live: __mmask16 = if count - start >= 16 { 0xFFFF } else { (1 << (count - start)) - 1 };
                let s = _mm512_loadu_ps(scores[start..start + 16].as_ptr());
                let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(s, s);
                let mut x = _mm512_mask_mov_ps(negative_infinity, live & ordered, s);
                x = step::<15>(x, negative_infinity);
                x = step::<14>(x, negative_infinity);
                x = step::<12>(x, negative_infinity);
                x = step::<8>(x, negative_infinity);
                // The same step with the maximum before these slots on the left.
                x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, max), max, x);
                let before =
                    _mm512_castsi512_ps(_mm512_alignr_epi32::<15>(_mm512_castps_si512(x), _mm512_castps_si512(max)));
                let rose = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(s, before) & live;
                // Slots past `count` get exponent 0, in the vector `expf`'s range.
                let exponent = _mm512_maskz_mov_ps(
                    live,
                    _mm512_mask_blend_ps(rose, _mm512_sub_ps(s, before), _mm512_sub_ps(before, s)),
                );
                let e = exp_512(exponent, &table);
                _mm512_storeu_ps(weights.max_scale[start..start + 16].as_mut_ptr(), _mm512_mask_blend_ps(rose, one, e));
                _mm512_storeu_ps(weights.weight[start..start + 16].as_mut_ptr(), _mm512_mask_blend_ps(rose, e, one));
                weights.rose |= u32::from(rose) << start;
                max = _mm512_permutexvar_ps(_mm512_set1_epi32(15), x);
            }
            *running_max = _mm512_cvtss_f32(max);
        }
    }

    /// Rounds each lane to f16 and back: the accumulator's precision in ggml.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn round_to_f16(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    /// Eight cache elements (f16, or the bytes of an 8-bit row, sign-extended) widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_256<T: CacheElement>(values: &[T]) -> __m256 {
        debug_assert!(values.len() >= 8);
        if T::QUANTIZED {
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(values.as_ptr().cast())))
        } else {
            _mm256_cvtph_ps(_mm_loadu_si128(values.as_ptr().cast()))
        }
    }

    /// The first steps of `ggml_vec_dot_f16` in ggml's AVX-512 order (see
    /// `ggml_exact::dot_f16`) for a rounded query and a widened key, as 8-lane vectors: per
    /// 64-element block, four 16-lane accumulators, each held as two 8-lane halves; then
    /// (acc0 + acc2) + (acc1 + acc3), and the first step of `_mm512_reduce_add_ps`, lanes 8..16
    /// plus lanes 0..8. `dots_avx2` finishes the sum.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn eight_lanes_avx2(query: &[__m256], key: &[__m256]) -> __m256 {
        let zero = _mm256_setzero_ps();
        let mut low = [zero; 4];
        let mut high = [zero; 4];
        for (q, k) in query.chunks_exact(8).zip(key.chunks_exact(8)) {
            for j in 0..4 {
                low[j] = _mm256_fmadd_ps(q[2 * j], k[2 * j], low[j]);
                high[j] = _mm256_fmadd_ps(q[2 * j + 1], k[2 * j + 1], high[j]);
            }
        }
        let lanes_low = _mm256_add_ps(_mm256_add_ps(low[0], low[2]), _mm256_add_ps(low[1], low[3]));
        let lanes_high = _mm256_add_ps(_mm256_add_ps(high[0], high[2]), _mm256_add_ps(high[1], high[3]));
        _mm256_add_ps(lanes_high, lanes_low)
    }

    /// A query and a widened key multiplied lane by lane and summed down to 8 lanes by one
    /// chain of multiply-adds: eight operations at head size 64 where ggml's order takes fifteen.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn lanes_fast_avx2(query: &[__m256], key: &[__m256]) -> __m256 {
        let mut acc = _mm256_mul_ps(query[0], key[0]);
        for (q, k) in query[1..].iter().zip(&key[1..]) {
            acc = _mm256_fmadd_ps(*q, *k, acc);
        }
        acc
    }

    /// The rest of `_mm512_reduce_add_ps` for eight dot products at once, from their
    /// `eight_lanes_avx2` vectors: per product the upper four lanes plus the lower four, then
    /// (0 + 2) + (1 + 3), each addition as for one product alone, but eight products to a vector
    /// operation instead of a horizontal sum each. Lane `i` of the result is product `i`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots_avx2(eights: &[__m256; 8]) -> __m256 {
        // The last step leaves product 2j + k in lane 4k + j, so position p takes the vector of
        // product 4 (p % 2) + p / 2 to get them out in order.
        const ORDER: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];
        // [upper4 + lower4 of one product | of the next]: 128-bit halves regrouped, then added.
        let mut fours = [_mm256_setzero_ps(); 4];
        for (pair, four) in fours.iter_mut().enumerate() {
            let (a, b) = (eights[ORDER[2 * pair]], eights[ORDER[2 * pair + 1]]);
            *four = _mm256_add_ps(_mm256_permute2f128_ps::<0x31>(a, b), _mm256_permute2f128_ps::<0x20>(a, b));
        }
        // Per 128-bit half: [f0 + f2, f1 + f3] of one product, then of the next pair's.
        let mut pairs = [_mm256_setzero_ps(); 2];
        for (i, pair) in pairs.iter_mut().enumerate() {
            let (a, b) = (fours[2 * i], fours[2 * i + 1]);
            *pair = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(a, b), _mm256_shuffle_ps::<0xEE>(a, b));
        }
        // (f0 + f2) + (f1 + f3).
        _mm256_add_ps(_mm256_shuffle_ps::<0x88>(pairs[0], pairs[1]), _mm256_shuffle_ps::<0xDD>(pairs[0], pairs[1]))
    }

    /// Asks the CPU to bring the `len` f16 values of `data` from `start` into its nearest cache
    /// ahead of their use. A decode step streams every layer's cache rows from memory (they do
    /// not stay in the core's caches from one step to the next), and the hardware prefetcher
    /// alone leaves the kernels waiting for them much of the time (the timing test's "cold"
    /// figures). A prefetch never faults, so rows past the cache's end cost nothing but the
    /// request; `wrapping_add` keeps the address arithmetic defined there too.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prefetch<T>(data: &[T], start: usize, len: usize) {
        prefetch_bytes(data.as_ptr().wrapping_add(start).cast(), len * size_of::<T>());
    }

    /// `prefetch` of the `bytes` bytes from `first`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prefetch_bytes(first: *const i8, bytes: usize) {
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(line));
        }
    }

    /// How many vectors of a row the value pass takes at a time so that every head's
    /// accumulators for them stay in the `registers` left beside the value vector, the
    /// broadcast factors and temporaries: a divisor of `vectors`, so every chunk has the same,
    /// constant length.
    const fn chunk_vectors(vectors: usize, group: usize, registers: usize) -> usize {
        let mut chunk = registers / group;
        if chunk > vectors {
            chunk = vectors;
        }
        if chunk == 0 {
            chunk = 1;
        }
        while !vectors.is_multiple_of(chunk) {
            chunk -= 1;
        }
        chunk
    }

    /// `G` heads of dimension `DIM` (see `super::attend_group`), 8 lanes per vector.
    ///
    /// The same operations in the same order as the portable kernel, regrouped: per block of
    /// slots, first every head's dot products (`scores_avx2`), then each head's exponentials and
    /// running sum, then the value accumulation (`values_avx2`). Each pass is a run of
    /// independent work the CPU can overlap, and the heads' accumulator chains (multiply-add,
    /// round to f16, widen, slot after slot) interleave. The passes are separate functions so
    /// that each gets the registers to itself: the queries in one, the accumulators in the other.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group_avx2<const G: usize, const DIM: usize>(
        queries: &[&[f32]],
        rows: &Rows<'_>,
        scale: f32,
        out: &mut [f32],
    ) {
        const LANES: usize = 8;
        let vectors = DIM / LANES;
        let zero = _mm256_setzero_ps();
        let mut query = [[zero; MAX_HEAD_DIM / LANES]; G];
        for (query, source) in query.iter_mut().zip(queries) {
            let rounded = rounded_query(&source[..DIM]);
            for (vector, lanes) in query[..vectors].iter_mut().zip(rounded.chunks_exact(LANES)) {
                *vector = _mm256_loadu_ps(lanes.as_ptr());
            }
        }
        let mut accumulated = [[zero; MAX_HEAD_DIM / LANES]; G];
        let mut running_max = [f32::NEG_INFINITY; G];
        let mut running_sum = [0f32; G];
        let mut partial = [[[zero; LANES]; BLOCK / LANES]; G];
        let mut weights: [BlockWeights; G] = std::array::from_fn(|_| BlockWeights::new());
        for slot in 0..rows.visible.min(BLOCK) {
            prefetch(rows.key_data, rows.key_start(slot), DIM);
        }
        let mut first = 0;
        while first < rows.visible {
            let count = (rows.visible - first).min(BLOCK);
            let mut scores = [[0f32; BLOCK]; G];
            scores_avx2::<G, DIM, true, _, _>(&query, rows, first, count, scale, &mut partial, &mut scores);
            BlockWeights::fill(&mut weights, &scores, count, &mut running_max);
            values_avx2::<G, DIM>(rows, first, count, &weights, &mut accumulated, &mut running_sum);
            first += count;
        }
        for ((out, accumulated), &sum) in out.chunks_exact_mut(DIM).zip(&accumulated).zip(&running_sum) {
            let inverse_sum = _mm256_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
            for (lanes, acc) in out.chunks_exact_mut(LANES).zip(&accumulated[..vectors]) {
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(*acc, inverse_sum));
            }
        }
    }

    /// The scores of slots `first..first + count` for every head: each key row widened once
    /// and dotted with every query (in ggml's order where `EXACT`, else by `lanes_fast_avx2`),
    /// the products' last additions eight products at a time (`dots_avx2`; `partial` holds the
    /// products' eight lanes until then, and past `count` an earlier block's, whose sums are not
    /// used), then scaled.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_avx2<const G: usize, const DIM: usize, const EXACT: bool, K: CacheElement, V: CacheElement>(
        query: &[[__m256; MAX_HEAD_DIM / 8]; G],
        rows: &Rows<'_, K, V>,
        first: usize,
        count: usize,
        scale: f32,
        partial: &mut [[[__m256; 8]; BLOCK / 8]; G],
        scores: &mut [[f32; BLOCK]; G],
    ) {
        const LANES: usize = 8;
        let vectors = DIM / LANES;
        for offset in 0..count {
            // The value pass reads this block's value rows next; the fast kernel's value pass
            // is quick enough that the rows of the block after are asked for instead.
            prefetch(rows.value_data, rows.value_start(first + offset + if EXACT { 0 } else { BLOCK }), DIM);
            let key = rows.key(first + offset, DIM);
            let mut widened = [_mm256_setzero_ps(); MAX_HEAD_DIM / LANES];
            for (vector, lanes) in widened[..vectors].iter_mut().zip(key.chunks_exact(LANES)) {
                *vector = widen_256(lanes);
            }
            for (partial, query) in partial.iter_mut().zip(query) {
                partial[offset / LANES][offset % LANES] = if EXACT {
                    eight_lanes_avx2(&query[..vectors], &widened[..vectors])
                } else {
                    lanes_fast_avx2(&query[..vectors], &widened[..vectors])
                };
            }
        }
        let scale = _mm256_set1_ps(scale);
        // An 8-bit key's dot product is in units of its row's scale.
        let key_scales: [f32; BLOCK] = rows.key_scales(first, count);
        for (scores, partial) in scores.iter_mut().zip(partial.iter()) {
            for ((scores, eights), key_scales) in scores
                .chunks_exact_mut(LANES)
                .zip(partial)
                .zip(key_scales.chunks_exact(LANES))
                .take(count.div_ceil(LANES))
            {
                let mut dots = _mm256_mul_ps(dots_avx2(eights), scale);
                if K::QUANTIZED {
                    dots = _mm256_mul_ps(dots, _mm256_loadu_ps(key_scales.as_ptr()));
                }
                _mm256_storeu_ps(scores.as_mut_ptr(), dots);
            }
        }
    }

    /// Adds slots `first..first + count` to every head's accumulator and running sum: per slot
    /// and head, the rescale where the maximum rose, then the weighted value row, rounding to
    /// f16 after each, as ggml. A row's lanes are independent, so the pass goes through them a
    /// chunk of vectors at a time (`chunk_vectors`), each vector of a value row widened once for
    /// all heads. The sums' multiply-adds, a chain of latency per head, overlap the vector work.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values_avx2<const G: usize, const DIM: usize>(
        rows: &Rows<'_>,
        first: usize,
        count: usize,
        weights: &[BlockWeights; G],
        accumulated: &mut [[__m256; MAX_HEAD_DIM / 8]; G],
        running_sum: &mut [f32; G],
    ) {
        const LANES: usize = 8;
        const MAX_VECTORS: usize = MAX_HEAD_DIM / LANES;
        let vectors = DIM / LANES;
        let chunk = const { chunk_vectors(DIM / 8, G, 12) };
        for start in (0..vectors).step_by(chunk) {
            let mut acc = [[_mm256_setzero_ps(); MAX_VECTORS]; G];
            for (acc, all) in acc.iter_mut().zip(accumulated.iter()) {
                acc[..chunk].copy_from_slice(&all[start..start + chunk]);
            }
            for offset in 0..count {
                let value = &rows.value(first + offset, DIM)[start * LANES..(start + chunk) * LANES];
                for (vector, lanes) in value.chunks_exact(LANES).enumerate() {
                    let v = widen_256(lanes);
                    for (acc, weights) in acc.iter_mut().zip(weights) {
                        let acc = &mut acc[vector];
                        if weights.rose(offset) {
                            *acc = round_to_f16(_mm256_mul_ps(*acc, _mm256_set1_ps(weights.max_scale[offset])));
                        }
                        *acc = round_to_f16(_mm256_fmadd_ps(v, _mm256_set1_ps(weights.weight[offset]), *acc));
                    }
                }
                if start == 0 {
                    // The score pass reads the next block's key rows next.
                    if first + BLOCK + offset < rows.visible {
                        prefetch(rows.key_data, rows.key_start(first + BLOCK + offset), DIM);
                    }
                    // `S = S*ms + vs` in ggml, contracted to one fused multiply-add.
                    for (sum, weights) in running_sum.iter_mut().zip(weights) {
                        *sum = sum.mul_add(weights.max_scale[offset], weights.weight[offset]);
                    }
                }
            }
            for (acc, all) in acc.iter().zip(accumulated.iter_mut()) {
                all[start..start + chunk].copy_from_slice(&acc[..chunk]);
            }
        }
    }

    /// Rounds each lane to f16 and back (16 lanes).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn round_to_f16_512(x: __m512) -> __m512 {
        _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    /// Sixteen f16 values widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn widen_512<T: CacheElement>(values: &[T]) -> __m512 {
        debug_assert!(values.len() >= 16);
        if T::QUANTIZED {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(values.as_ptr().cast())))
        } else {
            _mm512_cvtph_ps(_mm256_loadu_si256(values.as_ptr().cast()))
        }
    }

    /// `eight_lanes_avx2` with each 16-lane accumulator in one register, stopping at the 16
    /// lanes of (acc0 + acc2) + (acc1 + acc3).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn lanes_avx512(query: &[__m512], key: &[__m512]) -> __m512 {
        let zero = _mm512_setzero_ps();
        let mut acc = [zero; 4];
        for (q, k) in query.chunks_exact(4).zip(key.chunks_exact(4)) {
            for j in 0..4 {
                acc[j] = _mm512_fmadd_ps(q[j], k[j], acc[j]);
            }
        }
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]))
    }

    /// A query and a widened key multiplied lane by lane and summed down to 16 lanes by one
    /// chain of multiply-adds: four operations at head size 64 where ggml's order takes seven.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn lanes_fast_avx512(query: &[__m512], key: &[__m512]) -> __m512 {
        let mut acc = _mm512_mul_ps(query[0], key[0]);
        for (q, k) in query[1..].iter().zip(&key[1..]) {
            acc = _mm512_fmadd_ps(*q, *k, acc);
        }
        acc
    }

    /// `_mm512_reduce_add_ps` as ggml's build runs it (lanes 8..16 plus lanes 0..8, the upper
    /// four plus the lower four, then (0 + 2) + (1 + 3)) for sixteen dot products at once, from
    /// their `lanes_avx512` vectors, sixteen products to a vector operation. Lane `i` of the
    /// result is product `i`.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn dots_avx512(lanes: &[__m512; 16]) -> __m512 {
        transposed_sums::<false>(lanes)
    }

    /// `a + b`, lane by lane, as f32 or (`INT`) as the 32-bit integers their bits hold.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn add_512<const INT: bool>(a: __m512, b: __m512) -> __m512 {
        if INT {
            _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(a), _mm512_castps_si512(b)))
        } else {
            _mm512_add_ps(a, b)
        }
    }

    /// The sums of sixteen vectors' lanes in one vector, by `dots_avx512`'s order of additions
    /// (`add_512::<INT>`).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn transposed_sums<const INT: bool>(lanes: &[__m512; 16]) -> __m512 {
        // The last step leaves product 4j + k in lane 4k + j, so position p takes the vector of
        // product 4 (p % 4) + p / 4 to get them out in order.
        const ORDER: [usize; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];
        // [lanes 8..16 + 0..8 of one product | of the next]: 128-bit quarters regrouped, added.
        let mut eights = [_mm512_setzero_ps(); 8];
        for (pair, eight) in eights.iter_mut().enumerate() {
            let (a, b) = (lanes[ORDER[2 * pair]], lanes[ORDER[2 * pair + 1]]);
            *eight = add_512::<INT>(_mm512_shuffle_f32x4::<0xEE>(a, b), _mm512_shuffle_f32x4::<0x44>(a, b));
        }
        // [upper4 + lower4] of four products.
        let mut fours = [_mm512_setzero_ps(); 4];
        for (pair, four) in fours.iter_mut().enumerate() {
            let (a, b) = (eights[2 * pair], eights[2 * pair + 1]);
            *four = add_512::<INT>(_mm512_shuffle_f32x4::<0xDD>(a, b), _mm512_shuffle_f32x4::<0x88>(a, b));
        }
        // Per 128-bit quarter: [f0 + f2, f1 + f3] of one product, then of the next pair's.
        let mut pairs = [_mm512_setzero_ps(); 2];
        for (i, pair) in pairs.iter_mut().enumerate() {
            let (a, b) = (fours[2 * i], fours[2 * i + 1]);
            *pair = add_512::<INT>(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b));
        }
        // (f0 + f2) + (f1 + f3).
        add_512::<INT>(_mm512_shuffle_ps::<0x88>(pairs[0], pairs[1]), _mm512_shuffle_ps::<0xDD>(pairs[0], pairs[1]))
    }

    /// `group_avx2` with 16 lanes per vector: half the instructions for the same lanes, and
    /// twice the registers (three heads' accumulators at head size 64 in one chunk).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn group_avx512<const G: usize, const DIM: usize>(
        queries: &[&[f32]],
        rows: &Rows<'_>,
        scale: f32,
        out: &mut [f32],
    ) {
        const LANES: usize = 16;
        let vectors = DIM / LANES;
        let zero = _mm512_setzero_ps();
        let mut query = [[zero; MAX_HEAD_DIM / LANES]; G];
        for (query, source) in query.iter_mut().zip(queries) {
            let rounded = rounded_query(&source[..DIM]);
            for (vector, lanes) in query[..vectors].iter_mut().zip(rounded.chunks_exact(LANES)) {
                *vector = _mm512_loadu_ps(lanes.as_ptr());
            }
        }
        let mut accumulated = [[zero; MAX_HEAD_DIM / LANES]; G];
        let mut running_max = [f32::NEG_INFINITY; G];
        let mut running_sum = [0f32; G];
        let mut partial = [[[zero; LANES]; BLOCK / LANES]; G];
        let mut weights: [BlockWeights; G] = std::array::from_fn(|_| BlockWeights::new());
        for slot in 0..rows.visible.min(BLOCK) {
            prefetch(rows.key_data, rows.key_start(slot), DIM);
        }
        let mut first = 0;
        while first < rows.visible {
            let count = (rows.visible - first).min(BLOCK);
            let mut scores = [[0f32; BLOCK]; G];
            scores_avx512::<G, DIM, true, _, _>(&query, rows, first, count, scale, &mut partial, &mut scores);
            fill_weights_avx512(&mut weights, &scores, count, &mut running_max);
            values_avx512::<G, DIM>(rows, first, count, &weights, &mut accumulated, &mut running_sum);
            first += count;
        }
        for ((out, accumulated), &sum) in out.chunks_exact_mut(DIM).zip(&accumulated).zip(&running_sum) {
            let inverse_sum = _mm512_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
            for (lanes, acc) in out.chunks_exact_mut(LANES).zip(&accumulated[..vectors]) {
                _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mul_ps(*acc, inverse_sum));
            }
        }
    }

    /// The scores of slots `first..first + count` for every head: each key row widened once
    /// and dotted with every query, the products' last additions sixteen products at a time
    /// (`dots_avx512`; `partial` holds the products' sixteen lanes until then, and past `count` an
    /// earlier block's, whose sums are not used), then scaled.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn scores_avx512<const G: usize, const DIM: usize, const EXACT: bool, K: CacheElement, V: CacheElement>(
        query: &[[__m512; MAX_HEAD_DIM / 16]; G],
        rows: &Rows<'_, K, V>,
        first: usize,
        count: usize,
        scale: f32,
        partial: &mut [[[__m512; 16]; BLOCK / 16]; G],
        scores: &mut [[f32; BLOCK]; G],
    ) {
        const LANES: usize = 16;
        let vectors = DIM / LANES;
        for offset in 0..count {
            // The value pass reads this block's value rows next; the fast kernel's value pass
            // is quick enough that the rows of the block after are asked for instead.
            prefetch(rows.value_data, rows.value_start(first + offset + if EXACT { 0 } else { BLOCK }), DIM);
            let key = rows.key(first + offset, DIM);
            let mut widened = [_mm512_setzero_ps(); MAX_HEAD_DIM / LANES];
            for (vector, lanes) in widened[..vectors].iter_mut().zip(key.chunks_exact(LANES)) {
                *vector = widen_512(lanes);
            }
            for (partial, query) in partial.iter_mut().zip(query) {
                partial[offset / LANES][offset % LANES] = if EXACT {
                    lanes_avx512(&query[..vectors], &widened[..vectors])
                } else {
                    lanes_fast_avx512(&query[..vectors], &widened[..vectors])
                };
            }
        }
        let scale = _mm512_set1_ps(scale);
        // An 8-bit key's dot product is in units of its row's scale.
        let key_scales: [f32; BLOCK] = rows.key_scales(first, count);
        for (scores, partial) in scores.iter_mut().zip(partial.iter()) {
            for ((scores, eights), key_scales) in scores
                .chunks_exact_mut(LANES)
                .zip(partial)
                .zip(key_scales.chunks_exact(LANES))
                .take(count.div_ceil(LANES))
            {
                let mut dots = _mm512_mul_ps(dots_avx512(eights), scale);
                if K::QUANTIZED {
                    dots = _mm512_mul_ps(dots, _mm512_loadu_ps(key_scales.as_ptr()));
                }
                _mm512_storeu_ps(scores.as_mut_ptr(), dots);
            }
        }
    }

    /// Adds slots `first..first + count` to every head's accumulator and running sum: per slot
    /// and head, the rescale where the maximum rose, then the weighted value row, rounding to
    /// f16 after each, as ggml. A row's lanes are independent, so the pass goes through them a
    /// chunk of vectors at a time (`chunk_vectors`), each vector of a value row widened once for
    /// all heads. The sums' multiply-adds, a chain of latency per head, overlap the vector work.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn values_avx512<const G: usize, const DIM: usize>(
        rows: &Rows<'_>,
        first: usize,
        count: usize,
        weights: &[BlockWeights; G],
        accumulated: &mut [[__m512; MAX_HEAD_DIM / 16]; G],
        running_sum: &mut [f32; G],
    ) {
        const LANES: usize = 16;
        const MAX_VECTORS: usize = MAX_HEAD_DIM / LANES;
        let vectors = DIM / LANES;
        let chunk = const { chunk_vectors(DIM / 16, G, 26) };
        for start in (0..vectors).step_by(chunk) {
            let mut acc = [[_mm512_setzero_ps(); MAX_VECTORS]; G];
            for (acc, all) in acc.iter_mut().zip(accumulated.iter()) {
                acc[..chunk].copy_from_slice(&all[start..start + chunk]);
            }
            for offset in 0..count {
                let value = &rows.value(first + offset, DIM)[start * LANES..(start + chunk) * LANES];
                for (vector, lanes) in value.chunks_exact(LANES).enumerate() {
                    let v = widen_512(lanes);
                    for (acc, weights) in acc.iter_mut().zip(weights) {
                        let acc = &mut acc[vector];
                        if weights.rose(offset) {
                            *acc = round_to_f16_512(_mm512_mul_ps(*acc, _mm512_set1_ps(weights.max_scale[offset])));
                        }
                        *acc = round_to_f16_512(_mm512_fmadd_ps(v, _mm512_set1_ps(weights.weight[offset]), *acc));
                    }
                }
                if start == 0 {
                    // The score pass reads the next block's key rows next.
                    if first + BLOCK + offset < rows.visible {
                        prefetch(rows.key_data, rows.key_start(first + BLOCK + offset), DIM);
                    }
                    // `S = S*ms + vs` in ggml, contracted to one fused multiply-add.
                    for (sum, weights) in running_sum.iter_mut().zip(weights) {
                        *sum = sum.mul_add(weights.max_scale[offset], weights.weight[offset]);
                    }
                }
            }
            for (acc, all) in acc.iter().zip(accumulated.iter_mut()) {
                all[start..start + chunk].copy_from_slice(&acc[..chunk]);
            }
        }
    }

    /// The fast kernel (`Arithmetic::Fast`) for `queries.len()` heads of `rows`'s KV head with
    /// AVX-512; `false` (nothing written) for a shape it is not built for.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn attend_group_fast_avx512<K: CacheElement, V: CacheElement>(
        queries: &[&[f32]],
        rows: &Rows<'_, K, V>,
        scale: f32,
        out: &mut [f32],
    ) -> bool {
        by_shape!(fast_avx512[K, V], queries, rows, scale, out)
    }

    /// `G` heads of dimension `DIM` in f32 throughout: the scores as `scores_avx512` takes them
    /// (of the query already scaled, not rounded to f16), then per block of slots one maximum,
    /// one rescale of the accumulators where it rose, the block's weights sixteen at a time
    /// (`fast_weights_avx512`), and the weighted value rows added in f32. Against the exact
    /// kernel this drops the two conversions per multiply-add that ggml's f16 accumulator costs
    /// (most of the value pass), the per-slot rescale, and the C library's `expf`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn fast_avx512<const G: usize, const DIM: usize, K: CacheElement, V: CacheElement>(
        queries: &[&[f32]],
        rows: &Rows<'_, K, V>,
        scale: f32,
        out: &mut [f32],
    ) {
        const LANES: usize = 16;
        let vectors = DIM / LANES;
        let zero = _mm512_setzero_ps();
        let mut query = [[zero; MAX_HEAD_DIM / LANES]; G];
        for (query, source) in query.iter_mut().zip(queries) {
            for (vector, lanes) in query[..vectors].iter_mut().zip(source[..DIM].chunks_exact(LANES)) {
                *vector = _mm512_mul_ps(_mm512_loadu_ps(lanes.as_ptr()), _mm512_set1_ps(scale));
            }
        }
        let mut accumulated = [[zero; MAX_HEAD_DIM / LANES]; G];
        let mut running_max = [f32::NEG_INFINITY; G];
        let mut running_sum = [0f32; G];
        let mut partial = [[[zero; LANES]; BLOCK / LANES]; G];
        for slot in 0..rows.visible.min(PREFETCH_KEYS_AHEAD) {
            prefetch(rows.key_data, rows.key_start(slot), DIM);
        }
        for slot in 0..rows.visible.min(BLOCK) {
            prefetch(rows.value_data, rows.value_start(slot), DIM);
        }
        let mut first = 0;
        while first < rows.visible {
            let count = (rows.visible - first).min(BLOCK);
            let mut scores = [[0f32; BLOCK]; G];
            scores_avx512::<G, DIM, false, _, _>(&query, rows, first, count, 1.0, &mut partial, &mut scores);
            let mut weights = [[0f32; BLOCK]; G];
            for head in 0..G {
                let factor = fast_weights_avx512(
                    &scores[head],
                    count,
                    &mut running_max[head],
                    &mut running_sum[head],
                    &mut weights[head],
                );
                if factor != 1.0 {
                    for vector in &mut accumulated[head][..vectors] {
                        *vector = _mm512_mul_ps(*vector, _mm512_set1_ps(factor));
                    }
                }
            }
            // An 8-bit value row's elements are in units of its scale: so is its weight here
            // (the running sum above took the weights themselves).
            if V::QUANTIZED {
                for offset in 0..count {
                    let value_scale = rows.value_scale(first + offset);
                    for weights in &mut weights {
                        weights[offset] *= value_scale;
                    }
                }
            }
            values_fast_avx512::<G, DIM, K, V>(rows, first, count, &weights, &mut accumulated);
            first += count;
        }
        for ((out, accumulated), &sum) in out.chunks_exact_mut(DIM).zip(&accumulated).zip(&running_sum) {
            let inverse_sum = _mm512_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
            for (lanes, acc) in out.chunks_exact_mut(LANES).zip(&accumulated[..vectors]) {
                _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_mul_ps(*acc, inverse_sum));
            }
        }
    }

    /// One head's weights for the first `count` `scores` of a block: the block's maximum
    /// raises `running_max` (once per block, not per slot as ggml's online softmax does), each
    /// weight is e^(score - max), and `running_sum` is rescaled and grows by them. Returns the
    /// factor the head's accumulator must be scaled by first (1 where the maximum held).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn fast_weights_avx512(
        scores: &[f32; BLOCK],
        count: usize,
        running_max: &mut f32,
        running_sum: &mut f32,
        weights: &mut [f32; BLOCK],
    ) -> f32 {
        const _: () = assert!(BLOCK == 32);
        let live = |start: usize| -> __mmask16 {
            match count.saturating_sub(start) {
                0 => 0,
                n if n >= 16 => 0xFFFF,
                n => (1 << n) - 1,
            }
        };
        let negative_infinity = _mm512_set1_ps(f32::NEG_INFINITY);
        let (live_low, live_high) = (live(0), live(16));
        let low = _mm512_mask_loadu_ps(negative_infinity, live_low, scores.as_ptr());
        let high = _mm512_mask_loadu_ps(negative_infinity, live_high, scores[16..].as_ptr());
        let block_max = _mm512_reduce_max_ps(_mm512_max_ps(low, high));
        let mut factor = 1f32;
        if block_max > *running_max {
            factor = (*running_max - block_max).exp();
            *running_max = block_max;
            *running_sum *= factor;
        }
        let max = _mm512_set1_ps(*running_max);
        let weights_low = _mm512_maskz_mov_ps(live_low, fast_exp_avx512(_mm512_sub_ps(low, max)));
        let weights_high = _mm512_maskz_mov_ps(live_high, fast_exp_avx512(_mm512_sub_ps(high, max)));
        _mm512_storeu_ps(weights.as_mut_ptr(), weights_low);
        _mm512_storeu_ps(weights[16..].as_mut_ptr(), weights_high);
        *running_sum += _mm512_reduce_add_ps(_mm512_add_ps(weights_low, weights_high));
        factor
    }

    /// e^x for x <= 0 to about 2 ulp (Cephes' `expf`: x = n ln 2 + r with |r| <= ln 2 / 2, a
    /// degree-7 polynomial in r, times 2^n by `scalef`, which also underflows gracefully to 0).
    /// Arguments below -88 give e^-88 or less (zero or nearly), which is all a softmax weight
    /// that small can contribute.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn fast_exp_avx512(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-88.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        // ln 2 in two parts, so that n * LN2_HIGH is exact for the n that occur.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(p, n)
    }

    /// Adds the weighted value rows of slots `first..first + count` to every head's f32
    /// accumulator, a chunk of a row's vectors at a time as `values_avx512` (each vector
    /// widened once for all heads), and prefetches the next block's key rows.
    #[inline(never)]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn values_fast_avx512<const G: usize, const DIM: usize, K: CacheElement, V: CacheElement>(
        rows: &Rows<'_, K, V>,
        first: usize,
        count: usize,
        weights: &[[f32; BLOCK]; G],
        accumulated: &mut [[__m512; MAX_HEAD_DIM / 16]; G],
    ) {
        const LANES: usize = 16;
        const MAX_VECTORS: usize = MAX_HEAD_DIM / LANES;
        let vectors = DIM / LANES;
        let chunk = const { chunk_vectors(DIM / 16, G, 26) };
        for start in (0..vectors).step_by(chunk) {
            let mut acc = [[_mm512_setzero_ps(); MAX_VECTORS]; G];
            for (acc, all) in acc.iter_mut().zip(accumulated.iter()) {
                acc[..chunk].copy_from_slice(&all[start..start + chunk]);
            }
            for offset in 0..count {
                let value = &rows.value(first + offset, DIM)[start * LANES..(start + chunk) * LANES];
                for (vector, lanes) in value.chunks_exact(LANES).enumerate() {
                    let v = widen_512(lanes);
                    for (acc, weights) in acc.iter_mut().zip(weights) {
                        acc[vector] = _mm512_fmadd_ps(v, _mm512_set1_ps(weights[offset]), acc[vector]);
                    }
                }
                if start == 0 && first + PREFETCH_KEYS_AHEAD + offset < rows.visible {
                    prefetch(rows.key_data, rows.key_start(first + PREFETCH_KEYS_AHEAD + offset), DIM);
                }
            }
            for (acc, all) in acc.iter().zip(accumulated.iter_mut()) {
                all[start..start + chunk].copy_from_slice(&acc[..chunk]);
            }
        }
    }

    /// Whether the CPU has what `attend_group_q8_vnni` needs beside AVX-512F: byte and word
    /// operations (BW) and the integer dot products (VNNI).
    pub(super) fn has_avx512_vnni() -> bool {
        has_avx512()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }

    /// The fast kernel for an 8-bit cache (`kv=q8`) in integer arithmetic (`q8_vnni`); `false`
    /// (nothing written) for f16 rows or a shape it is not built for.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn attend_group_q8_vnni<K: CacheElement, V: CacheElement>(
        queries: &[&[f32]],
        rows: &Rows<'_, K, V>,
        scale: f32,
        out: &mut [f32],
    ) -> bool {
        // The kernel reads rows as bytes.
        if !(K::QUANTIZED && V::QUANTIZED && size_of::<K>() == 1 && size_of::<V>() == 1) {
            return false;
        }
        by_shape!(q8_vnni[K, V], queries, rows, scale, out)
    }

    /// `fast_avx512` over 8-bit rows with integer dot products, where widening every byte of a
    /// row to f32 was most of the work (the f32 kernel is compute-bound on 8-bit rows: ~58
    /// vector operations per slot for three heads of 64).
    ///
    /// Scores: the scaled query rounded to 8 bits as a key row is (one scale per head, as
    /// llama.cpp rounds its query for an 8-bit cache), and a row's 64 bytes dotted with it by
    /// one `vpdpbusd` per head. That instruction multiplies unsigned by signed bytes, so the key
    /// goes in shifted by 128 (its sign bit flipped) and 128 x the query's sum comes off after.
    /// Values: per block, each head's weights (value scales folded in) rounded to 15 bits of
    /// the block's largest, and two slots' rows, widened to 16 bits and interleaved, added to
    /// 32-bit sums by one `vpdpwssd` per 16 elements and head; the sums join the f32
    /// accumulators at the end of the block (at most 2 x 32767 x 128 x 16 = 1.3e8 < 2^31).
    /// The interleaving leaves the elements in `pair_order`, undone once at the end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_vnni<const G: usize, const DIM: usize, K: CacheElement, V: CacheElement>(
        queries: &[&[f32]],
        rows: &Rows<'_, K, V>,
        scale: f32,
        out: &mut [f32],
    ) {
        const LANES: usize = 16;
        let vectors = DIM / LANES;
        let zero = _mm512_setzero_ps();
        let zero_int = _mm512_setzero_si512();
        let mut query = [[zero_int; MAX_HEAD_DIM / 64]; G];
        let mut query_step = [0f32; G];
        let mut query_offset = [zero_int; G];
        for head in 0..G {
            let mut bytes = [0i8; MAX_HEAD_DIM];
            let (step, sum) = super::query_in_8_bits(&queries[head][..DIM], scale, &mut bytes);
            for (vector, bytes) in query[head].iter_mut().zip(bytes.chunks_exact(64)) {
                *vector = _mm512_loadu_si512(bytes.as_ptr().cast());
            }
            query_step[head] = step;
            query_offset[head] = _mm512_set1_epi32(128 * sum);
        }
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut accumulated = [[zero; MAX_HEAD_DIM / LANES]; G];
        let mut running_max = [f32::NEG_INFINITY; G];
        let mut running_sum = [0f32; G];
        let mut partial = [[[zero_int; LANES]; BLOCK / LANES]; G];
        for slot in 0..rows.visible.min(PREFETCH_KEYS_AHEAD) {
            prefetch(rows.key_data, rows.key_start(slot), DIM);
        }
        for slot in 0..rows.visible.min(BLOCK) {
            prefetch(rows.value_data, rows.value_start(slot), DIM);
        }
        let (key_stride, value_stride) = (rows.key_rows.slot_stride, rows.value_rows.slot_stride);
        let mut first = 0;
        while first < rows.visible {
            let count = (rows.visible - first).min(BLOCK);
            // Rows by address from the block's first: the block's last rows are in bounds
            // (`Rows::key` and `Rows::value` check), so are those before them. Per slot the
            // loops below do little besides their vector work, whose instructions are few
            // enough that address arithmetic and bounds checks would set the pace.
            let keys = rows.key(first + count - 1, DIM).as_ptr().sub((count - 1) * key_stride).cast::<i8>();
            let values = rows.value(first + count - 1, DIM).as_ptr().sub((count - 1) * value_stride).cast::<i8>();
            let key_start = rows.key_start(first);
            let (mut key, mut value_ahead) = (
                keys,
                rows.value_data.as_ptr().wrapping_add(rows.value_start(first) + BLOCK * value_stride).cast::<i8>(),
            );
            for sixteen in 0..count.div_ceil(LANES) {
                let live = count - sixteen * LANES;
                for lane in 0..LANES {
                    if lane >= live {
                        break;
                    }
                    prefetch_bytes(value_ahead, DIM);
                    value_ahead = value_ahead.wrapping_add(value_stride);
                    let mut dots = [zero_int; G];
                    for part in 0..DIM / 64 {
                        let bytes = _mm512_loadu_si512(key.cast::<__m512i>().add(part));
                        let shifted = _mm512_xor_si512(bytes, flip);
                        for (dots, query) in dots.iter_mut().zip(&query) {
                            *dots = _mm512_dpbusd_epi32(*dots, shifted, query[part]);
                        }
                    }
                    key = key.wrapping_add(key_stride);
                    for (partial, dots) in partial.iter_mut().zip(dots) {
                        partial[sixteen][lane] = dots;
                    }
                }
            }
            let key_scales: [f32; BLOCK] = rows.key_scales(first, count);
            let value_scales: [f32; BLOCK] = rows.value_scales(first, count);
            let mut pair_weights = [[0i32; BLOCK / 2]; G];
            let mut weight_step = [0f32; G];
            for head in 0..G {
                let mut scores = [0f32; BLOCK];
                for ((scores, partial), key_scales) in scores
                    .chunks_exact_mut(LANES)
                    .zip(&partial[head])
                    .zip(key_scales.chunks_exact(LANES))
                    .take(count.div_ceil(LANES))
                {
                    let dots = _mm512_sub_epi32(dots_i32_avx512(partial), query_offset[head]);
                    let dots = _mm512_mul_ps(_mm512_cvtepi32_ps(dots), _mm512_set1_ps(query_step[head]));
                    _mm512_storeu_ps(scores.as_mut_ptr(), _mm512_mul_ps(dots, _mm512_loadu_ps(key_scales.as_ptr())));
                }
                let mut weights = [0f32; BLOCK];
                let factor =
                    fast_weights_avx512(&scores, count, &mut running_max[head], &mut running_sum[head], &mut weights);
                if factor != 1.0 {
                    for vector in &mut accumulated[head][..vectors] {
                        *vector = _mm512_mul_ps(*vector, _mm512_set1_ps(factor));
                    }
                }
                // Weights past `count` are 0. A value row's elements are in units of its scale,
                // so its weight takes the scale (the running sum above took the weights alone).
                let low = _mm512_mul_ps(_mm512_loadu_ps(weights.as_ptr()), _mm512_loadu_ps(value_scales.as_ptr()));
                let high = _mm512_mul_ps(
                    _mm512_loadu_ps(weights[16..].as_ptr()),
                    _mm512_loadu_ps(value_scales[16..].as_ptr()),
                );
                let largest = _mm512_reduce_max_ps(_mm512_max_ps(low, high));
                if largest > 0.0 && largest.is_finite() {
                    let inverse = _mm512_set1_ps(32767.0 / largest);
                    // Saturating, for a product that rounds up to 32768.
                    let words =
                        |weights: __m512| _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(weights, inverse)));
                    _mm256_storeu_si256(pair_weights[head].as_mut_ptr().cast(), words(low));
                    _mm256_storeu_si256(pair_weights[head][8..].as_mut_ptr().cast(), words(high));
                    weight_step[head] = largest / 32767.0;
                }
            }
            let mut sums = [[zero_int; MAX_HEAD_DIM / LANES]; G];
            let mut key_ahead =
                rows.key_data.as_ptr().wrapping_add(key_start + PREFETCH_KEYS_AHEAD * key_stride).cast::<i8>();
            for pair in 0..count.div_ceil(2) {
                let a = values.add(2 * pair * value_stride).cast::<__m256i>();
                // An odd block's last pair repeats its row, with weight 0.
                let b = if 2 * pair + 1 < count { a.cast::<i8>().add(value_stride).cast() } else { a };
                let mut interleaved = [zero_int; MAX_HEAD_DIM / LANES];
                for part in 0..DIM / 32 {
                    let (a, b) = (
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256(a.add(part))),
                        _mm512_cvtepi8_epi16(_mm256_loadu_si256(b.add(part))),
                    );
                    interleaved[2 * part] = _mm512_unpacklo_epi16(a, b);
                    interleaved[2 * part + 1] = _mm512_unpackhi_epi16(a, b);
                }
                for (sums, pair_weights) in sums.iter_mut().zip(&pair_weights) {
                    let weights = _mm512_set1_epi32(pair_weights[pair]);
                    for (sum, interleaved) in sums[..vectors].iter_mut().zip(&interleaved) {
                        *sum = _mm512_dpwssd_epi32(*sum, *interleaved, weights);
                    }
                }
                // Past the last row this asks for lines no one reads, which costs nothing more.
                prefetch_bytes(key_ahead, DIM);
                prefetch_bytes(key_ahead.wrapping_add(key_stride), DIM);
                key_ahead = key_ahead.wrapping_add(2 * key_stride);
            }
            for ((accumulated, sums), &step) in accumulated.iter_mut().zip(&sums).zip(&weight_step) {
                let step = _mm512_set1_ps(step);
                for (accumulated, sum) in accumulated[..vectors].iter_mut().zip(sums) {
                    *accumulated = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*sum), step, *accumulated);
                }
            }
            first += count;
        }
        for ((out, accumulated), &sum) in out.chunks_exact_mut(DIM).zip(&accumulated).zip(&running_sum) {
            let inverse_sum = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            let mut lanes = [0f32; MAX_HEAD_DIM];
            for (lanes, vector) in lanes.chunks_exact_mut(LANES).zip(&accumulated[..vectors]) {
                _mm512_storeu_ps(lanes.as_mut_ptr(), *vector);
            }
            for (position, &value) in lanes[..DIM].iter().enumerate() {
                out[pair_order(position)] = value * inverse_sum;
            }
        }
    }

    /// The element of a row that position `position` of `q8_vnni`'s sums holds. Vectors
    /// `2p` and `2p + 1` come from elements `32p..32p + 32` (widened to 16 bits: 8 per 128-bit
    /// lane), the first from the lower four of each lane's eight (`unpacklo`), the second
    /// from the upper four.
    fn pair_order(position: usize) -> usize {
        let (vector, lane) = (position / 16, position % 16);
        32 * (vector / 2) + 8 * (lane / 4) + 4 * (vector % 2) + lane % 4
    }

    /// `dots_avx512` over 32-bit integers: lane `i` of the result is the sum of `lanes[i]`'s
    /// sixteen lanes (an integer sum, in whatever order).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn dots_i32_avx512(lanes: &[__m512i; 16]) -> __m512i {
        // SAFETY: both are 64 bytes of any bits, with the same alignment.
        let lanes = unsafe { &*(lanes as *const [__m512i; 16]).cast::<[__m512; 16]>() };
        _mm512_castps_si512(transposed_sums::<true>(lanes))
    }

    /// The fast kernel with AVX2 alone, as `attend_group_fast_avx512`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_group_fast_avx2<K: CacheElement, V: CacheElement>(
        queries: &[&[f32]],
        rows: &Rows<'_, K, V>,
        scale: f32,
        out: &mut [f32],
    ) -> bool {
        by_shape!(fast_avx2[K, V], queries, rows, scale, out)
    }

    /// `fast_avx512` with 8 lanes per vector: the scores as `scores_avx2` takes them (of the
    /// query already scaled, not rounded to f16), then per block of slots one maximum, one
    /// rescale of the accumulators where it rose, the block's weights eight at a time
    /// (`fast_weights_avx2`), and the weighted value rows added in f32 (`values_fast_avx2`).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fast_avx2<const G: usize, const DIM: usize, K: CacheElement, V: CacheElement>(
        queries: &[&[f32]],
        rows: &Rows<'_, K, V>,
        scale: f32,
        out: &mut [f32],
    ) {
        const LANES: usize = 8;
        let vectors = DIM / LANES;
        let zero = _mm256_setzero_ps();
        let mut query = [[zero; MAX_HEAD_DIM / LANES]; G];
        for (query, source) in query.iter_mut().zip(queries) {
            for (vector, lanes) in query[..vectors].iter_mut().zip(source[..DIM].chunks_exact(LANES)) {
                *vector = _mm256_mul_ps(_mm256_loadu_ps(lanes.as_ptr()), _mm256_set1_ps(scale));
            }
        }
        let mut accumulated = [[zero; MAX_HEAD_DIM / LANES]; G];
        let mut running_max = [f32::NEG_INFINITY; G];
        let mut running_sum = [0f32; G];
        let mut partial = [[[zero; LANES]; BLOCK / LANES]; G];
        for slot in 0..rows.visible.min(PREFETCH_KEYS_AHEAD) {
            prefetch(rows.key_data, rows.key_start(slot), DIM);
        }
        for slot in 0..rows.visible.min(BLOCK) {
            prefetch(rows.value_data, rows.value_start(slot), DIM);
        }
        let mut first = 0;
        while first < rows.visible {
            let count = (rows.visible - first).min(BLOCK);
            let mut scores = [[0f32; BLOCK]; G];
            scores_avx2::<G, DIM, false, _, _>(&query, rows, first, count, 1.0, &mut partial, &mut scores);
            let mut weights = [[0f32; BLOCK]; G];
            for head in 0..G {
                let factor = fast_weights_avx2(
                    &scores[head],
                    count,
                    &mut running_max[head],
                    &mut running_sum[head],
                    &mut weights[head],
                );
                if factor != 1.0 {
                    for vector in &mut accumulated[head][..vectors] {
                        *vector = _mm256_mul_ps(*vector, _mm256_set1_ps(factor));
                    }
                }
            }
            // An 8-bit value row's elements are in units of its scale: so is its weight here
            // (the running sum above took the weights themselves).
            if V::QUANTIZED {
                for offset in 0..count {
                    let value_scale = rows.value_scale(first + offset);
                    for weights in &mut weights {
                        weights[offset] *= value_scale;
                    }
                }
            }
            values_fast_avx2::<G, DIM, K, V>(rows, first, count, &weights, &mut accumulated);
            first += count;
        }
        for ((out, accumulated), &sum) in out.chunks_exact_mut(DIM).zip(&accumulated).zip(&running_sum) {
            let inverse_sum = _mm256_set1_ps(if sum == 0.0 { 0.0 } else { 1.0 / sum });
            for (lanes, acc) in out.chunks_exact_mut(LANES).zip(&accumulated[..vectors]) {
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(*acc, inverse_sum));
            }
        }
    }

    /// `fast_weights_avx512` with four 8-lane vectors to the block: lanes past `count` are
    /// -inf for the maximum and 0 as weights.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fast_weights_avx2(
        scores: &[f32; BLOCK],
        count: usize,
        running_max: &mut f32,
        running_sum: &mut f32,
        weights: &mut [f32; BLOCK],
    ) -> f32 {
        const LANES: usize = 8;
        const _: () = assert!(BLOCK == 4 * LANES);
        let negative_infinity = _mm256_set1_ps(f32::NEG_INFINITY);
        let lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // All ones in the lanes of slots before `count` (`count <= BLOCK`, so the casts are exact).
        let live: [__m256; 4] = std::array::from_fn(|vector| {
            let left = _mm256_set1_epi32(count as i32 - (vector * LANES) as i32);
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(left, lane_index))
        });
        let lanes: [__m256; 4] = std::array::from_fn(|vector| {
            let loaded = _mm256_loadu_ps(scores[vector * LANES..].as_ptr());
            _mm256_blendv_ps(negative_infinity, loaded, live[vector])
        });
        let max = _mm256_max_ps(_mm256_max_ps(lanes[0], lanes[1]), _mm256_max_ps(lanes[2], lanes[3]));
        let max = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps::<1>(max));
        let max = _mm_max_ps(max, _mm_movehl_ps(max, max));
        let block_max = _mm_cvtss_f32(_mm_max_ss(max, _mm_shuffle_ps::<0b01>(max, max)));
        let mut factor = 1f32;
        if block_max > *running_max {
            factor = (*running_max - block_max).exp();
            *running_max = block_max;
            *running_sum *= factor;
        }
        let max = _mm256_set1_ps(*running_max);
        let mut sum = _mm256_setzero_ps();
        for (vector, (lanes, live)) in lanes.iter().zip(&live).enumerate() {
            let weight = _mm256_and_ps(*live, fast_exp_avx2(_mm256_sub_ps(*lanes, max)));
            _mm256_storeu_ps(weights[vector * LANES..].as_mut_ptr(), weight);
            sum = _mm256_add_ps(sum, weight);
        }
        let sum = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
        let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
        *running_sum += _mm_cvtss_f32(_mm_add_ss(sum, _mm_shuffle_ps::<0b01>(sum, sum)));
        factor
    }

    /// `fast_exp_avx512` in 8 lanes, for x <= 0: the same polynomial and constants, with 2^n
    /// applied by adding n to the exponent bits of the polynomial's value (in [0.70, 1.42])
    /// instead of by `scalef`, which AVX2 lacks. So that the result stays a normal float, x is
    /// clamped to [-87, 0] first: arguments below -87 give e^-87 ~ 1.6e-38, as negligible a
    /// softmax weight as zero. (At x >= -87, n >= -126, and where n = -126 the remainder r is
    /// positive, so the value is at least 1 and the exponent stays at -126 or above.)
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn fast_exp_avx2(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_setzero_ps());
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // ln 2 in two parts, so that n * LN2_HIGH is exact for the n that occur.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let exponent = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n));
        _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), exponent))
    }

    /// Adds the weighted value rows of slots `first..first + count` to every head's f32
    /// accumulator, a chunk of a row's vectors at a time as `values_avx2` (each vector
    /// widened once for all heads), and prefetches the next block's key rows.
    #[inline(never)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn values_fast_avx2<const G: usize, const DIM: usize, K: CacheElement, V: CacheElement>(
        rows: &Rows<'_, K, V>,
        first: usize,
        count: usize,
        weights: &[[f32; BLOCK]; G],
        accumulated: &mut [[__m256; MAX_HEAD_DIM / 8]; G],
    ) {
        const LANES: usize = 8;
        const MAX_VECTORS: usize = MAX_HEAD_DIM / LANES;
        let vectors = DIM / LANES;
        let chunk = const { chunk_vectors(DIM / 8, G, 12) };
        for start in (0..vectors).step_by(chunk) {
            let mut acc = [[_mm256_setzero_ps(); MAX_VECTORS]; G];
            for (acc, all) in acc.iter_mut().zip(accumulated.iter()) {
                acc[..chunk].copy_from_slice(&all[start..start + chunk]);
            }
            for offset in 0..count {
                let value = &rows.value(first + offset, DIM)[start * LANES..(start + chunk) * LANES];
                for (vector, lanes) in value.chunks_exact(LANES).enumerate() {
                    let v = widen_256(lanes);
                    for (acc, weights) in acc.iter_mut().zip(weights) {
                        acc[vector] = _mm256_fmadd_ps(v, _mm256_set1_ps(weights[offset]), acc[vector]);
                    }
                }
                if start == 0 && first + PREFETCH_KEYS_AHEAD + offset < rows.visible {
                    prefetch(rows.key_data, rows.key_start(first + PREFETCH_KEYS_AHEAD + offset), DIM);
                }
            }
            for (acc, all) in acc.iter().zip(accumulated.iter_mut()) {
                all[start..start + chunk].copy_from_slice(&acc[..chunk]);
            }
        }
    }

    /// How far ahead of the block being weighed the fast kernels ask for key rows.
    const PREFETCH_KEYS_AHEAD: usize = 2 * BLOCK;

    /// Keeps `MAX_GROUP` and the shapes `by_shape!` lists in step.
    const _: () = assert!(MAX_GROUP == 4);
}

/// glibc's `expf` (sysdeps/ieee754/flt-32/e_expf.c, as built with FMA), four lanes of double at a
/// time: x/ln2 scaled by 32 split into an integer k and r, 2^(k/32) from a 32-entry table with k's
/// high bits added to the exponent, a degree-3 polynomial in r. Only for arguments where glibc takes
/// this path and the result is normal (-87.9 <= x <= 0, the range of a softmax's shifted scores);
/// other lanes are left to the C library. `glibc_expf_matches_the_c_library` checks it bit for bit.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
mod glibc_expf {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    const TABLE_BITS: u32 = 5;
    const N: f64 = (1u32 << TABLE_BITS) as f64;
    /// 0x1.71547652b82fep+0 * N (1/ln 2, scaled).
    const INV_LN2_N: f64 = std::f64::consts::LOG2_E * N;
    /// 0x1.8p+52: adding it rounds to an integer held in the low mantissa bits.
    const SHIFT: f64 = 6755399441055744.0;
    /// glibc's `__exp2f_data.poly_scaled`: 0x1.c6af84b912394p-5/N^3, 0x1.ebfce50fac4f3p-3/N^2,
    /// 0x1.62e42ff0c52d6p-1/N, built from the bits of the unscaled coefficients (exact divisions).
    const POLY: [f64; 3] = [
        f64::from_bits(0x3FAC_6AF8_4B91_2394) / (N * N * N),
        f64::from_bits(0x3FCE_BFCE_50FA_C4F3) / (N * N),
        f64::from_bits(0x3FE6_2E42_FF0C_52D6) / N,
    ];

    /// `__exp2f_data.tab`: the bits of 2^(i/32) less i << 47 (the exponent part k adds back).
    fn table() -> &'static [u64; 32] {
        static TABLE: OnceLock<[u64; 32]> = OnceLock::new();
        TABLE.get_or_init(|| {
            std::array::from_fn(|i| {
                let value = exp2_correctly_rounded(i as u32);
                value.to_bits().wrapping_sub((i as u64) << (52 - TABLE_BITS))
            })
        })
    }

    /// 2^(i/32) as a double. glibc's table holds the correctly rounded values, which `f64::exp2`
    /// gives for these 32 arguments; an entry one ulp off would change results for some inputs of
    /// its index, which `glibc_expf_matches_the_c_library` (11 million inputs) would catch.
    fn exp2_correctly_rounded(i: u32) -> f64 {
        (f64::from(i) / N).exp2()
    }

    pub(super) fn lane_in_range(x: f32) -> bool {
        (-87.9..=0.0).contains(&x)
    }

    /// `Some` when every lane is in range (see the module comment), else `None`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp8(x: &[f32]) -> Option<[f32; 8]> {
        if x.len() < 8 || !x[..8].iter().all(|&v| lane_in_range(v)) {
            return None;
        }
        let table = table();
        let [c0, c1, c2] = POLY;
        let mut out = [0f32; 8];
        for half in 0..2 {
            let xd = _mm256_cvtps_pd(_mm_loadu_ps(x[half * 4..half * 4 + 4].as_ptr()));
            let z = _mm256_mul_pd(_mm256_set1_pd(INV_LN2_N), xd);
            let shifted = _mm256_add_pd(z, _mm256_set1_pd(SHIFT));
            let ki = _mm256_castpd_si256(shifted);
            let kd = _mm256_sub_pd(shifted, _mm256_set1_pd(SHIFT));
            let r = _mm256_sub_pd(z, kd);
            let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
            let entry = _mm256_i64gather_epi64::<8>(table.as_ptr().cast(), index);
            let s = _mm256_castsi256_pd(_mm256_add_epi64(entry, _mm256_slli_epi64::<{ 52 - TABLE_BITS as i32 }>(ki)));
            let zz = _mm256_fmadd_pd(_mm256_set1_pd(c0), r, _mm256_set1_pd(c1));
            let r2 = _mm256_mul_pd(r, r);
            let y = _mm256_fmadd_pd(_mm256_set1_pd(c2), r, _mm256_set1_pd(1.0));
            let y = _mm256_fmadd_pd(zz, r2, y);
            let y = _mm256_mul_pd(y, s);
            _mm_storeu_ps(out[half * 4..half * 4 + 4].as_mut_ptr(), _mm256_cvtpd_ps(y));
        }
        Some(out)
    }

    /// The table as four registers of eight entries, for `exp16`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn table_512() -> [__m512i; 4] {
        let table = table();
        let mut quarters = [_mm512_setzero_si512(); 4];
        for (quarter, entries) in quarters.iter_mut().zip(table.chunks_exact(8)) {
            *quarter = _mm512_loadu_si512(entries.as_ptr().cast());
        }
        quarters
    }

    /// Whether every lane is in range (see the module comment): two compares.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn in_range_16(x: __m512) -> bool {
        let in_range = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-87.9))
            & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, _mm512_setzero_ps());
        in_range == 0xFFFF
    }

    /// `exp8` for sixteen lanes, all in range (`in_range_16`), with AVX-512: the same
    /// operations per lane, eight doubles to a register, and the table (`table_512`) read with
    /// two-register permutes instead of a gather.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp16(x: __m512, table: &[__m512i; 4]) -> __m512 {
        let [c0, c1, c2] = POLY;
        let halves = [_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)))];
        let mut out = [_mm256_setzero_ps(); 2];
        for (half, out) in halves.into_iter().zip(&mut out) {
            let xd = _mm512_cvtps_pd(half);
            let z = _mm512_mul_pd(_mm512_set1_pd(INV_LN2_N), xd);
            let shifted = _mm512_add_pd(z, _mm512_set1_pd(SHIFT));
            let ki = _mm512_castpd_si512(shifted);
            let kd = _mm512_sub_pd(shifted, _mm512_set1_pd(SHIFT));
            let r = _mm512_sub_pd(z, kd);
            let index = _mm512_and_si512(ki, _mm512_set1_epi64(31));
            // The permutes index with the low four bits; bit 4 picks the upper half of the table.
            let upper = _mm512_test_epi64_mask(index, _mm512_set1_epi64(16));
            let entry = _mm512_mask_blend_epi64(
                upper,
                _mm512_permutex2var_epi64(table[0], index, table[1]),
                _mm512_permutex2var_epi64(table[2], index, table[3]),
            );
            let s = _mm512_castsi512_pd(_mm512_add_epi64(entry, _mm512_slli_epi64::<{ 52 - TABLE_BITS }>(ki)));
            let zz = _mm512_fmadd_pd(_mm512_set1_pd(c0), r, _mm512_set1_pd(c1));
            let r2 = _mm512_mul_pd(r, r);
            let y = _mm512_fmadd_pd(_mm512_set1_pd(c2), r, _mm512_set1_pd(1.0));
            let y = _mm512_fmadd_pd(zz, r2, y);
            let y = _mm512_mul_pd(y, s);
            *out = _mm512_cvtpd_ps(y);
        }
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(out[0])),
            _mm256_castps_pd(out[1]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel and group limit every `cpu_flash_attention` call uses instead of the detected
    /// ones while set, so that one process can time them against each other
    /// (`decode_speed_by_kernel`; run it alone, as the other tests expect the default).
    pub(super) static FORCED: std::sync::Mutex<Option<(Kernel, usize)>> = std::sync::Mutex::new(None);

    /// A pseudo-random cache with a wide range of scores, so the online softmax rescales often.
    fn cache_values(n: usize, seed: u32) -> Vec<f16> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                f16::from_f32(((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 6.0)
            })
            .collect()
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_expf_matches_the_c_library() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        // Every 97th f32 from -0 down to -87.9 (about 11 million values), eight at a time.
        let mut bits = (-0.0f32).to_bits();
        let mut mismatches = Vec::new();
        loop {
            let lanes: [f32; 8] = std::array::from_fn(|lane| f32::from_bits(bits + 97 * lane as u32));
            if !lanes.iter().all(|&x| glibc_expf::lane_in_range(x)) {
                break;
            }
            // SAFETY: the features were checked above.
            let got = unsafe { glibc_expf::exp8(&lanes) }.expect("in range");
            for (x, e) in lanes.iter().zip(got) {
                if e.to_bits() != x.exp().to_bits() && mismatches.len() < 5 {
                    mismatches.push((*x, e, x.exp()));
                }
            }
            bits += 97 * 8;
        }
        assert!(mismatches.is_empty(), "x, ours, libm: {mismatches:?}");
        // SAFETY: as above.
        assert!(unsafe { glibc_expf::exp8(&[0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -88.5]) }.is_none());
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_expf_sixteen_lanes_matches_the_c_library() {
        use std::arch::x86_64::_mm512_loadu_ps;
        if !(std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        // As `glibc_expf_matches_the_c_library`, sixteen at a time, lanes spread over the range
        // so that every table index and both halves of the table meet in one call.
        let mut bits = (-0.0f32).to_bits();
        let mut mismatches = Vec::new();
        loop {
            let lanes: [f32; 16] = std::array::from_fn(|lane| f32::from_bits(bits + 89 * lane as u32));
            if !lanes.iter().all(|&x| glibc_expf::lane_in_range(x)) {
                break;
            }
            // SAFETY: the features were checked above.
            let got: [f32; 16] = unsafe {
                let x = _mm512_loadu_ps(lanes.as_ptr());
                assert!(glibc_expf::in_range_16(x));
                std::mem::transmute(glibc_expf::exp16(x, &glibc_expf::table_512()))
            };
            for (x, e) in lanes.iter().zip(got) {
                if e.to_bits() != x.exp().to_bits() && mismatches.len() < 5 {
                    mismatches.push((*x, e, x.exp()));
                }
            }
            bits += 89 * 16;
        }
        assert!(mismatches.is_empty(), "x, ours, libm: {mismatches:?}");
        let mut out_of_range = [-1.0f32; 16];
        for bad in [-88.5f32, 0.5, f32::NAN, f32::NEG_INFINITY] {
            out_of_range[9] = bad;
            // SAFETY: as above.
            assert!(!unsafe { glibc_expf::in_range_16(_mm512_loadu_ps(out_of_range.as_ptr())) }, "{bad}");
        }
    }

    /// Every kernel this CPU runs for the head size, the portable one first.
    fn kernels(head_dim: usize) -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if x86::supported(head_dim) {
            kernels.push(Kernel::Avx2);
            if x86::has_avx512() {
                kernels.push(Kernel::Avx512);
            }
            if x86::has_avx512_vnni() {
                kernels.push(Kernel::Avx512Vnni);
            }
        }
        kernels
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|x| x.to_bits()).collect()
    }

    /// Each SIMD kernel, for every group size (and one past `MAX_GROUP`, which falls back to the
    /// portable kernel), gives every head the bits of the portable kernel run for that head
    /// alone; over cache lengths around the block size and the 8-lane exponentials, padded
    /// rows, a second KV head, and queries from gentle to extreme (scores far enough apart that
    /// weights underflow and the vector `expf` hands lanes to the C library).
    #[test]
    fn grouped_simd_kernels_agree_with_the_portable_kernel_to_the_bit() {
        let query_scales = [1.37f32, 0.25, 3.0, 12.0, 60.0];
        for head_dim in [64usize, 128, 192, 256] {
            let slots = 1100;
            let layout = CacheRows { offset: 24, head_stride: slots * (head_dim + 8) + 16, slot_stride: head_dim + 8 };
            let storage = layout.offset + 2 * layout.head_stride;
            let keys = cache_values(storage, 1);
            let values = cache_values(storage, 2);
            let queries: Vec<Vec<f32>> = query_scales
                .iter()
                .enumerate()
                .map(|(h, scale)| cache_values(head_dim, 3 + h as u32).iter().map(|q| q.to_f32() * scale).collect())
                .collect();
            let queries: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
            for kv_head in [0usize, 1] {
                for visible in [1usize, 2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 300, 1100] {
                    let rows = Rows {
                        key_rows: &layout,
                        key_data: &keys,
                        value_rows: &layout,
                        value_data: &values,
                        key_scales: ScaleRows::NONE,
                        value_scales: ScaleRows::NONE,
                        kv_head,
                        visible,
                    };
                    let mut portable = vec![0f32; queries.len() * head_dim];
                    for (query, out) in queries.iter().zip(portable.chunks_exact_mut(head_dim)) {
                        attend_one_portable(query, &rows, 0.125, out);
                    }
                    for kernel in kernels(head_dim) {
                        for group in 1..=MAX_GROUP + 1 {
                            for heads in [0, queries.len() - group] {
                                let mut grouped = vec![0f32; group * head_dim];
                                attend_group(kernel, &queries[heads..heads + group], &rows, 0.125, &mut grouped);
                                assert_eq!(
                                    bits(&grouped),
                                    bits(&portable[heads * head_dim..(heads + group) * head_dim]),
                                    "{kernel:?}, heads {heads}..{}, head_dim {head_dim}, kv head {kv_head}, {visible} slots",
                                    heads + group
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// One head's attention in f64, softmax and all: the yardstick for both arithmetics.
    fn attend_f64<K: CacheElement, V: CacheElement>(query: &[f32], rows: &Rows<'_, K, V>, scale: f32) -> Vec<f64> {
        let head_dim = query.len();
        let scores: Vec<f64> = (0..rows.visible)
            .map(|slot| {
                let key = rows.key(slot, head_dim);
                let dot = key.iter().zip(query).map(|(k, &q)| f64::from(k.widen()) * f64::from(q)).sum::<f64>();
                dot * f64::from(rows.key_scale(slot)) * f64::from(scale)
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|score| (score - max).exp()).collect();
        let sum: f64 = weights.iter().sum();
        let mut out = vec![0f64; head_dim];
        for (slot, weight) in weights.iter().enumerate() {
            let value_scale = f64::from(rows.value_scale(slot));
            for (out, value) in out.iter_mut().zip(rows.value(slot, head_dim)) {
                *out += weight * f64::from(value.widen()) * value_scale;
            }
        }
        out.iter().map(|out| out / sum).collect()
    }

    fn largest_difference(ours: &[f32], reference: &[f64]) -> f64 {
        ours.iter().zip(reference).map(|(&a, b)| (f64::from(a) - b).abs()).fold(0.0, f64::max)
    }

    /// Every fast kernel (the portable one; each SIMD one for every group size, and one past
    /// `MAX_GROUP`, which falls back) gives each head what attention in f64 gives, to within
    /// what f32 scores allow (the outputs lie in [-3, 3]; at the largest query scale the dot
    /// products sum terms of hundreds, whose rounding moves the weights by ~1e-4), and ten
    /// times closer at least than llama.cpp's arithmetic does.
    /// Also: each head's result does not depend on the group it ran in, to the bit.
    #[test]
    fn fast_kernels_agree_with_attention_in_f64() {
        let query_scales = [1.37f32, 0.25, 3.0, 12.0, 60.0];
        let (mut worst_fast, mut worst_llama_cpp) = (0f64, 0f64);
        for head_dim in [64usize, 128, 192, 256] {
            let slots = 1100;
            let layout = CacheRows { offset: 24, head_stride: slots * (head_dim + 8) + 16, slot_stride: head_dim + 8 };
            let storage = layout.offset + 2 * layout.head_stride;
            let keys = cache_values(storage, 1);
            let values = cache_values(storage, 2);
            let queries: Vec<Vec<f32>> = query_scales
                .iter()
                .enumerate()
                .map(|(h, scale)| cache_values(head_dim, 3 + h as u32).iter().map(|q| q.to_f32() * scale).collect())
                .collect();
            let queries: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
            for kv_head in [0usize, 1] {
                for visible in [1usize, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 300, 1100] {
                    let rows = Rows {
                        key_rows: &layout,
                        key_data: &keys,
                        value_rows: &layout,
                        value_data: &values,
                        key_scales: ScaleRows::NONE,
                        value_scales: ScaleRows::NONE,
                        kv_head,
                        visible,
                    };
                    let reference: Vec<Vec<f64>> =
                        queries.iter().map(|query| attend_f64(query, &rows, 0.125)).collect();
                    let mut alone = Vec::new();
                    for (query, reference) in queries.iter().zip(&reference) {
                        let mut out = vec![0f32; head_dim];
                        attend_one_portable(query, &rows, 0.125, &mut out);
                        worst_llama_cpp = worst_llama_cpp.max(largest_difference(&out, reference));
                        for kernel in kernels(head_dim) {
                            attend_group_fast(kernel, &[query], &rows, 0.125, &mut out);
                            worst_fast = worst_fast.max(largest_difference(&out, reference));
                            alone.push((kernel, out.clone()));
                        }
                    }
                    for kernel in kernels(head_dim) {
                        for group in 1..=MAX_GROUP + 1 {
                            for heads in [0, queries.len() - group] {
                                let mut grouped = vec![0f32; group * head_dim];
                                attend_group_fast(kernel, &queries[heads..heads + group], &rows, 0.125, &mut grouped);
                                // Past `MAX_GROUP` the SIMD kernels hand the heads to the portable one.
                                let runs = if group > MAX_GROUP { Kernel::Portable } else { kernel };
                                for (head, out) in (heads..heads + group).zip(grouped.chunks_exact(head_dim)) {
                                    let by_itself =
                                        alone.iter().filter(|(k, _)| *k == runs).nth(head).map(|(_, out)| out);
                                    assert_eq!(
                                        Some(bits(out)),
                                        by_itself.map(|out| bits(out)),
                                        "{kernel:?}, head {head} of {heads}..{}, head_dim {head_dim}, {visible} slots",
                                        heads + group
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        eprintln!("largest difference from f64: fast {worst_fast:e}, llama.cpp's arithmetic {worst_llama_cpp:e}");
        // Measured: 1.7e-4, at the largest query scale (products of hundreds summed in f32);
        // llama.cpp's arithmetic: 9.3e-2.
        assert!(worst_fast < 5e-4, "fast kernels {worst_fast:e} from f64");
        assert!(worst_fast * 10.0 < worst_llama_cpp, "fast {worst_fast:e}, llama.cpp's {worst_llama_cpp:e}");
    }

    /// 8-bit rows (`kv=q8`): every fast kernel gives what attention in f64 over the same
    /// rows gives (their bytes times their scales), as close as over f16 rows, and each head
    /// the same bits alone as in any group. The integer kernel (AVX-512 VNNI) is held to f64
    /// attention of the query it reads, rounded to 8 bits; what that rounding costs a real
    /// model is for the llama.cpp golden test (`an_8_bit_cache_keeps_llama_cpp_greedy_tokens`).
    /// The rows sit in padded buffers, scales too, and of two KV heads.
    #[test]
    fn fast_kernels_read_8_bit_rows_as_attention_in_f64_does() {
        let query_scales = [1.37f32, 0.25, 3.0, 12.0, 60.0];
        let (mut worst, mut worst_integer) = (0f64, 0f64);
        for head_dim in [64usize, 128, 192, 256] {
            let slots = 700;
            let layout = CacheRows { offset: 24, head_stride: slots * (head_dim + 8) + 16, slot_stride: head_dim + 8 };
            let scale_layout = (5, slots + 3, 1);
            let quantized = |seed: u32| {
                let source = cache_values(layout.offset + 2 * layout.head_stride, seed);
                let mut data = vec![0u8; source.len()];
                let mut scales = vec![0f32; scale_layout.0 + 2 * scale_layout.1];
                for kv_head in 0..2 {
                    for slot in 0..slots {
                        let start = layout.start(kv_head, slot);
                        // Rows of growing magnitude, so that the scales differ from row to row.
                        let growth = 1.0 + slot as f32 / 100.0;
                        let row: Vec<f32> =
                            source[start..start + head_dim].iter().map(|v| v.to_f32() * growth).collect();
                        let (mut bytes, mut scale) = (Vec::new(), Vec::new());
                        crate::kv_format::quantize_q8(&row, head_dim, &mut bytes, &mut scale);
                        data[start..start + head_dim].copy_from_slice(&bytes);
                        scales[scale_layout.0 + kv_head * scale_layout.1 + slot * scale_layout.2] = scale[0];
                    }
                }
                (data, scales)
            };
            let ((keys, key_scales), (values, value_scales)) = (quantized(1), quantized(2));
            let scale_rows = |data| ScaleRows {
                data,
                offset: scale_layout.0,
                head_stride: scale_layout.1,
                slot_stride: scale_layout.2,
            };
            let queries: Vec<Vec<f32>> = query_scales
                .iter()
                .enumerate()
                .map(|(h, scale)| cache_values(head_dim, 3 + h as u32).iter().map(|q| q.to_f32() * scale).collect())
                .collect();
            let queries: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
            for kv_head in [0usize, 1] {
                for visible in [1usize, 2, 15, 16, 17, 31, 32, 33, 65, 700] {
                    let rows = Rows {
                        key_rows: &layout,
                        key_data: keys.as_slice(),
                        key_scales: scale_rows(&key_scales),
                        value_rows: &layout,
                        value_data: values.as_slice(),
                        value_scales: scale_rows(&value_scales),
                        kv_head,
                        visible,
                    };
                    for kernel in kernels(head_dim) {
                        let mut grouped = vec![0f32; queries.len() * head_dim];
                        let (first, rest) = grouped.split_at_mut(MAX_GROUP * head_dim);
                        attend_group_fast(kernel, &queries[..MAX_GROUP], &rows, 0.125, first);
                        attend_group_fast(kernel, &queries[MAX_GROUP..], &rows, 0.125, rest);
                        for (head, (query, grouped)) in queries.iter().zip(grouped.chunks_exact(head_dim)).enumerate() {
                            let mut alone = vec![0f32; head_dim];
                            attend_group_fast(kernel, &[query], &rows, 0.125, &mut alone);
                            assert_eq!(
                                bits(&alone),
                                bits(grouped),
                                "{kernel:?}, head {head}, {head_dim}, {visible} slots"
                            );
                            let reference = attend_f64(&query_as_read(kernel, query, 0.125), &rows, 0.125);
                            let worst = if integer_kernel(kernel) { &mut worst_integer } else { &mut worst };
                            *worst = worst.max(largest_difference(&alone, &reference));
                        }
                    }
                }
            }
        }
        eprintln!("largest difference from f64 over 8-bit rows: {worst:e}, integer kernel {worst_integer:e}");
        // Measured 2.5e-4; the outputs lie in [-21, 21] here (values grow with the slot).
        assert!(worst < 1e-3, "fast kernels {worst:e} from f64 over 8-bit rows");
        // The integer kernel's weights in 15 bits of each block's largest: measured 3.3e-4.
        assert!(worst_integer < 1e-3, "integer kernel {worst_integer:e} from f64 over 8-bit rows");
    }

    /// Whether `kernel` reads 8-bit rows in integer arithmetic, the query rounded to 8 bits.
    fn integer_kernel(kernel: Kernel) -> bool {
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Avx512Vnni {
            return true;
        }
        let _ = kernel;
        false
    }

    /// The query `kernel` attends with over 8-bit rows: itself, or for the integer kernel the
    /// query it rounds to 8 bits (`query_in_8_bits`, `query x scale` in units of a step).
    fn query_as_read(kernel: Kernel, query: &[f32], scale: f32) -> Vec<f32> {
        if !integer_kernel(kernel) {
            return query.to_vec();
        }
        let mut bytes = vec![0i8; query.len()];
        let (step, _) = query_in_8_bits(query, scale, &mut bytes);
        bytes.iter().map(|&byte| f32::from(byte) * step / scale).collect()
    }

    /// `fast_exp_avx512` within 2 ulp of e^x wherever e^x is a normal f32, and (nearly) zero
    /// below, over every 61st f32 from 0 down to -100.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fast_exp_is_within_two_ulp() {
        use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
        if !x86::has_avx512() {
            return;
        }
        let mut bits = (-0.0f32).to_bits();
        let mut worst = (0u32, 0f32);
        while f32::from_bits(bits) > -100.0 {
            let lanes: [f32; 16] = std::array::from_fn(|lane| f32::from_bits(bits + 61 * lane as u32));
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F was checked above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), x86::fast_exp_avx512(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &e) in lanes.iter().zip(&got) {
                let exact = f64::from(x).exp() as f32;
                if exact >= f32::MIN_POSITIVE {
                    let ulps = e.to_bits().abs_diff(exact.to_bits());
                    if ulps > worst.0 {
                        worst = (ulps, x);
                    }
                } else {
                    assert!((0.0..1e-37).contains(&e), "e^{x} gave {e}");
                }
            }
            bits += 61 * 16;
        }
        assert!(worst.0 <= 2, "{} ulp at {}", worst.0, worst.1);
    }

    /// `fast_exp_avx2` within 2 ulp of e^x down to its clamp at -87 (where e^x is still a normal
    /// f32), and at most e^-87 (nearly zero) below, over every 61st f32 from 0 down to -100.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fast_exp_avx2_is_within_two_ulp() {
        use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        let mut bits = (-0.0f32).to_bits();
        let mut worst = (0u32, 0f32);
        while f32::from_bits(bits) > -100.0 {
            let lanes: [f32; 8] = std::array::from_fn(|lane| f32::from_bits(bits + 61 * lane as u32));
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA were checked above (`fast_exp_avx2` uses no F16C instruction).
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), x86::fast_exp_avx2(_mm256_loadu_ps(lanes.as_ptr()))) };
            for (&x, &e) in lanes.iter().zip(&got) {
                if x >= -87.0 {
                    let exact = f64::from(x).exp() as f32;
                    let ulps = e.to_bits().abs_diff(exact.to_bits());
                    if ulps > worst.0 {
                        worst = (ulps, x);
                    }
                } else {
                    assert!((0.0..1e-37).contains(&e), "e^{x} gave {e}");
                }
            }
            bits += 61 * 8;
        }
        assert!(worst.0 <= 2, "{} ulp at {}", worst.0, worst.1);
    }

    /// The same on values whose weighted sums leave f16's range (overflow to infinity) or fall
    /// into its subnormals, where a rounding shortcut would show; and on keys that are zeros (of
    /// either sign) on most slots, so that many scores tie at zero and the running maximum must
    /// handle equal values as the loop does.
    #[test]
    fn grouped_simd_kernels_agree_on_extreme_values() {
        let head_dim = 64;
        let slots = 400;
        let layout = CacheRows { offset: 0, head_stride: slots * head_dim, slot_stride: head_dim };
        let random_keys = cache_values(slots * head_dim, 11);
        let zero_keys: Vec<f16> = random_keys
            .iter()
            .enumerate()
            .map(|(i, &k)| match (i / head_dim) % 5 {
                0 => k,
                1 | 3 => f16::ZERO,
                2 => f16::NEG_ZERO,
                _ => {
                    if i % 2 == 0 {
                        f16::ZERO
                    } else {
                        f16::NEG_ZERO
                    }
                }
            })
            .collect();
        for (keys, value_scale) in
            [(&random_keys, 1e-7f32), (&random_keys, 3e-5), (&random_keys, 2e4), (&zero_keys, 1.0), (&zero_keys, 3e-5)]
        {
            let values: Vec<f16> =
                cache_values(slots * head_dim, 12).iter().map(|v| f16::from_f32(v.to_f32() * value_scale)).collect();
            let queries: Vec<Vec<f32>> =
                (0..3).map(|h| cache_values(head_dim, 13 + h).iter().map(|q| q.to_f32() * 0.3).collect()).collect();
            let queries: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
            for visible in [1usize, 2, 17, 40, 400] {
                let rows = Rows {
                    key_rows: &layout,
                    key_data: keys,
                    value_rows: &layout,
                    value_data: &values,
                    key_scales: ScaleRows::NONE,
                    value_scales: ScaleRows::NONE,
                    kv_head: 0,
                    visible,
                };
                let mut portable = vec![0f32; 3 * head_dim];
                for (query, out) in queries.iter().zip(portable.chunks_exact_mut(head_dim)) {
                    attend_one_portable(query, &rows, 0.125, out);
                }
                for kernel in kernels(head_dim) {
                    let mut grouped = vec![0f32; 3 * head_dim];
                    attend_group(kernel, &queries, &rows, 0.125, &mut grouped);
                    assert_eq!(bits(&grouped), bits(&portable), "{kernel:?}, values x{value_scale}, {visible} slots");
                }
            }
        }
    }

    #[test]
    fn tasks_group_heads_while_every_thread_keeps_work() {
        // One thread: one task per KV head. Two threads, one query row: one task each.
        assert_eq!(task_bounds(1, 9, 3, 1), vec![0, 3, 6, 9]);
        assert_eq!(task_bounds(1, 9, 3, 2), vec![0, 4, 9]);
        assert_eq!(task_bounds(2, 9, 3, 2), vec![0, 3, 6, 9, 12, 15, 18]);
        assert_eq!(task_bounds(1, 9, 3, 16), (0..=9).collect::<Vec<_>>());
        assert_eq!(task_bounds(1, 4, 1, 1), vec![0, 1, 2, 3, 4]);
    }

    /// `cpu_flash_attention` end to end, on narrowed cache views as the cache hands them over:
    /// however the units are split into tasks (thread counts from 1 to more than there are
    /// heads), every output bit equals the portable kernel's, head by head (in the fast
    /// arithmetic: the kernel's own for one head alone).
    #[test]
    fn every_task_split_gives_the_portable_bits() {
        let (n_head, n_kv_head, head_dim, capacity, n_keys) = (9usize, 3usize, 64usize, 700usize, 650usize);
        let cache = |seed| {
            Tensor::from_vec(
                cache_values(n_kv_head * capacity * head_dim, seed),
                (n_kv_head, capacity, head_dim),
                &Device::Cpu,
            )
            .and_then(|t| t.narrow(1, 0, n_keys))
            .expect("cache view")
        };
        let (keys, values) = (cache(21), cache(22));
        for n_new in [1usize, 2, 5] {
            let query_values: Vec<f32> =
                cache_values(n_head * n_new * head_dim, 23 + n_new as u32).iter().map(|q| q.to_f32() * 1.7).collect();
            let queries =
                Tensor::from_vec(query_values.clone(), (n_head, n_new, head_dim), &Device::Cpu).expect("queries");
            let key_rows = CacheRows::new(&keys, DType::F16).expect("key layout");
            let value_rows = CacheRows::new(&values, DType::F16).expect("value layout");
            let key_guard = keys.storage_and_layout().0;
            let value_guard = values.storage_and_layout().0;
            for arithmetic in [Arithmetic::LlamaCpp, Arithmetic::Fast] {
                let mut expected = vec![0f32; n_new * n_head * head_dim];
                for (unit, out) in expected.chunks_exact_mut(head_dim).enumerate() {
                    let (row, head) = (unit / n_head, unit % n_head);
                    let rows = Rows {
                        key_rows: &key_rows,
                        key_data: element_slice(&key_guard).expect("keys"),
                        value_rows: &value_rows,
                        value_data: element_slice(&value_guard).expect("values"),
                        key_scales: ScaleRows::NONE,
                        value_scales: ScaleRows::NONE,
                        kv_head: head / (n_head / n_kv_head),
                        visible: n_keys - n_new + row + 1,
                    };
                    let query = &query_values[(head * n_new + row) * head_dim..][..head_dim];
                    match arithmetic {
                        Arithmetic::LlamaCpp => attend_one_portable(query, &rows, 0.125, out),
                        Arithmetic::Fast => attend_group_fast(Kernel::detect(head_dim), &[query], &rows, 0.125, out),
                    }
                }
                for threads in [1usize, 2, 3, 4, 8, 16] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                    let output = pool
                        .install(|| {
                            cpu_flash_attention(
                                &queries,
                                &KvRows::F16(keys.clone()),
                                &KvRows::F16(values.clone()),
                                0.125,
                                arithmetic,
                            )
                        })
                        .and_then(|t| Ok(t.flatten_all()?.to_vec1::<f32>()?))
                        .expect("attention");
                    assert_eq!(bits(&output), bits(&expected), "{arithmetic:?}, {n_new} rows, {threads} threads");
                }
            }
        }
    }

    /// Not a check: how long the kernels take per (head, slot) on a decode step's shape at the
    /// default cache's capacity, one thread, heads one at a time and grouped by KV head: with one
    /// layer's cache, which stays in the core's caches between calls ("hot"), and going through
    /// 30 layers' caches as a decode step does ("cold", 47 MB, read from further away).
    /// `cargo test -p sepchat-engine --release --lib attention_kernel_timings -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn attention_kernel_timings() {
        let (n_kv_head, heads_per_kv, head_dim, slots) = (3usize, 3usize, 64usize, 2048usize);
        let layer_size = n_kv_head * slots * head_dim;
        let keys = cache_values(30 * layer_size, 31);
        let values = cache_values(30 * layer_size, 32);
        // Gentle scores, as a trained model's: the maximum rarely rises after the first slots.
        let queries: Vec<Vec<f32>> = (0..n_kv_head * heads_per_kv)
            .map(|h| cache_values(head_dim, 33 + h as u32).iter().map(|q| q.to_f32() * 0.3).collect())
            .collect();
        let queries: Vec<&[f32]> = queries.iter().map(Vec::as_slice).collect();
        // The same rows in 8 bits (`kv=q8`), their scales `[layer, kv_head, slot]`.
        let quantize = |rows: &[f16]| {
            let floats: Vec<f32> = rows.iter().map(|v| v.to_f32()).collect();
            let (mut data, mut scales) = (Vec::new(), Vec::new());
            crate::kv_format::quantize_q8(&floats, head_dim, &mut data, &mut scales);
            (data, scales)
        };
        let ((keys_q8, key_scales), (values_q8, value_scales)) = (quantize(&keys), quantize(&values));
        let mut out = vec![0f32; queries.len() * head_dim];
        for (name, layers) in [("hot", 1usize), ("cold", 30)] {
            for (kernel, arithmetic, q8) in kernels(head_dim)
                .into_iter()
                .flat_map(|kernel| {
                    [
                        (kernel, Arithmetic::LlamaCpp, false),
                        (kernel, Arithmetic::Fast, false),
                        (kernel, Arithmetic::Fast, true),
                    ]
                })
                // ONLY=name times only that kernel and arithmetic, e.g. `ONLY="Avx512 Fast"` or
                // `ONLY="Avx512 Fast q8"` (for a profile).
                .filter(|(kernel, arithmetic, q8)| {
                    let name = format!("{kernel:?} {arithmetic:?}{}", if *q8 { " q8" } else { "" });
                    std::env::var("ONLY").map_or(true, |only| only == name)
                })
            {
                for group in [1usize, heads_per_kv] {
                    let mut best = f64::INFINITY;
                    // REPEAT=n runs each n times (for a profile).
                    let repeats = std::env::var("REPEAT").ok().and_then(|n| n.parse().ok());
                    for _ in 0..repeats.unwrap_or(if layers == 1 { 15 } else { 5 }) {
                        let started = std::time::Instant::now();
                        for layer in 0..layers {
                            let layout = CacheRows {
                                offset: layer * layer_size,
                                head_stride: slots * head_dim,
                                slot_stride: head_dim,
                            };
                            for kv_head in 0..n_kv_head {
                                let rows = Rows {
                                    key_rows: &layout,
                                    key_data: &keys,
                                    value_rows: &layout,
                                    value_data: &values,
                                    key_scales: ScaleRows::NONE,
                                    value_scales: ScaleRows::NONE,
                                    kv_head,
                                    visible: slots,
                                };
                                let scale_rows = |data| ScaleRows {
                                    data,
                                    offset: layer * n_kv_head * slots,
                                    head_stride: slots,
                                    slot_stride: 1,
                                };
                                let rows_q8 = Rows {
                                    key_rows: &layout,
                                    key_data: keys_q8.as_slice(),
                                    value_rows: &layout,
                                    value_data: values_q8.as_slice(),
                                    key_scales: scale_rows(&key_scales),
                                    value_scales: scale_rows(&value_scales),
                                    kv_head,
                                    visible: slots,
                                };
                                for first in (kv_head * heads_per_kv..(kv_head + 1) * heads_per_kv).step_by(group) {
                                    let out = &mut out[first * head_dim..(first + group) * head_dim];
                                    let queries = &queries[first..first + group];
                                    match arithmetic {
                                        Arithmetic::LlamaCpp => attend_group(kernel, queries, &rows, 0.125, out),
                                        Arithmetic::Fast if q8 => {
                                            attend_group_fast(kernel, queries, &rows_q8, 0.125, out)
                                        }
                                        Arithmetic::Fast => attend_group_fast(kernel, queries, &rows, 0.125, out),
                                    }
                                }
                            }
                        }
                        best = best.min(started.elapsed().as_secs_f64());
                    }
                    let per_head_slot = best * 1e9 / (layers * queries.len() * slots) as f64;
                    let format = if q8 { " q8" } else { "" };
                    println!(
                        "{name} {kernel:?} {arithmetic:?}{format} group {group}: {per_head_slot:.2} ns per head and slot"
                    );
                    std::hint::black_box(&out);
                }
            }
        }
    }

    /// Process CPU time so far, every thread, from /proc: unlike wall time, what other processes
    /// on a busy machine take does not count.
    fn cpu_seconds() -> f64 {
        let mut nanos = 0u64;
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let stat = std::fs::read_to_string(task.expect("a task").path().join("schedstat")).unwrap_or_default();
            nanos += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
        nanos as f64 * 1e-9
    }

    fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    /// Not a check: decode speed of the real default model after 1,024 and 16,384 tokens with
    /// the default SepCache, as `sepchat --threads 1 bench --cache default --context 1024
    /// --context 16384 --prefill 0 --decode 256` measures it (same text, cache and steps), but
    /// with the SIMD kernels, heads one at a time or grouped, alternated in one process (each
    /// round restores the same two filled caches) and timed by CPU time as well as wall time:
    /// on a busy machine separate runs differ by tens of percent, this much less.
    /// `cargo test -p sepchat-engine --release --lib decode_speed_by_kernel -- --ignored --nocapture`;
    /// optional: `ROUNDS` (4), `THREADS` (1), `CACHE` (a cache spec; `default`), `SNAPSHOTS=dir`
    /// (keep the filled caches, which take minutes to fill, between runs), `VARIANT=i` and
    /// `CONTEXT=n` (time only those, for a profile).
    #[test]
    #[ignore]
    fn decode_speed_by_kernel() {
        use crate::model::{LlamaModel, DEFAULT_PREFILL_CHUNK};

        let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(4);
        // THREADS=n for more than the bench's one thread.
        let threads: usize = std::env::var("THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
        pool.install(|| {
            let path = sepchat_gguf::default_model::default_model_path().expect("a home directory");
            let model = LlamaModel::load(&path, &Device::Cpu).expect("the default model (make fetch-model)");
            let text = include_str!("../../sepchat-cli/src/bench_text.txt");
            let source = model.tokenizer().encode(text).expect("tokens");
            let tokens = |start: usize, count: usize| -> Vec<u32> {
                (start..start + count).map(|i| source[i % source.len()]).collect()
            };
            // CACHE=spec for another cache than the default profile, e.g. `default:kv=q8`.
            let spec = std::env::var("CACHE").unwrap_or_else(|_| "default".to_string());
            let config = crate::CacheConfig::parse_for_model(&spec, model.config().context_length).expect("spec");
            let mut warm = model.new_cache(config.clone());
            model.prefill(&tokens(0, 16), &mut warm, DEFAULT_PREFILL_CHUNK).expect("warm-up");
            let contexts = [1024usize, 16384];
            let snapshots: Vec<Vec<u8>> = contexts
                .iter()
                .map(|&context| {
                    // SNAPSHOTS=dir keeps the filled caches between runs (a fill takes minutes).
                    let saved = std::env::var("SNAPSHOTS").ok().map(|dir| format!("{dir}/{context}.kv"));
                    if let Some(bytes) = saved.as_ref().and_then(|path| std::fs::read(path).ok()) {
                        return bytes;
                    }
                    let mut cache = model.new_cache(config.clone());
                    let fed = tokens(0, context);
                    model.prefill(&fed, &mut cache, DEFAULT_PREFILL_CHUNK).expect("fill");
                    let mut bytes = Vec::new();
                    cache.write_snapshot(&mut bytes, &fed, "timing").expect("snapshot");
                    eprintln!("filled {context}: {} slots", cache.len());
                    if let Some(path) = saved {
                        std::fs::write(path, &bytes).expect("saving the snapshot");
                    }
                    bytes
                })
                .collect();
            let head_dim = model.config().head_dim;
            let mut variants = Vec::new();
            for kernel in kernels(head_dim).into_iter().filter(|&kernel| kernel != Kernel::Portable) {
                variants.push(("heads one by one", kernel, 1));
                variants.push(("heads grouped", kernel, MAX_GROUP));
            }
            // VARIANT=i times only the i-th (for a profile).
            if let Some(only) = std::env::var("VARIANT").ok().and_then(|v| v.parse::<usize>().ok()) {
                variants = vec![variants[only]];
            }
            let decode_tokens = 256;
            // [variant][context] -> (wall tok/s, cpu tok/s) per round
            let mut results = vec![vec![Vec::new(); contexts.len()]; variants.len()];
            for round in 0..rounds {
                for (variant, &(_, kernel, max_group)) in variants.iter().enumerate() {
                    *FORCED.lock().expect("lock") = Some((kernel, max_group));
                    for (index, (&context, snapshot)) in contexts.iter().zip(&snapshots).enumerate() {
                        // CONTEXT=n times only that context (for a profile); the others read NaN.
                        if std::env::var("CONTEXT").is_ok_and(|only| only != context.to_string()) {
                            results[variant][index].push((f64::NAN, f64::NAN));
                            continue;
                        }
                        let mut cache = model.new_cache(config.clone());
                        cache.read_snapshot(&mut snapshot.as_slice(), "timing").expect("restore");
                        let (wall, cpu) = (std::time::Instant::now(), cpu_seconds());
                        for token in tokens(context, decode_tokens) {
                            model.prefill(&[token], &mut cache, 1).expect("decode");
                        }
                        let rates = (
                            decode_tokens as f64 / wall.elapsed().as_secs_f64(),
                            decode_tokens as f64 / (cpu_seconds() - cpu),
                        );
                        results[variant][index].push(rates);
                    }
                    let [short, long] = [0, 1].map(|i| *results[variant][i].last().expect("a round"));
                    eprintln!(
                        "round {round} {:?} {}: wall {:.1} / {:.1} tok/s ({:.3}), cpu {:.1} / {:.1} tok/s ({:.3})",
                        kernel,
                        variants[variant].0,
                        short.0,
                        long.0,
                        long.0 / short.0,
                        short.1,
                        long.1,
                        long.1 / short.1
                    );
                }
            }
            *FORCED.lock().expect("lock") = None;
            println!("median of {rounds} rounds, decode tok/s after 1,024 / after 16,384 tokens (ratio):");
            for ((name, kernel, _), results) in variants.iter().zip(&results) {
                let pick = |context: usize, cpu: bool| {
                    median(&mut results[context].iter().map(|r| if cpu { r.1 } else { r.0 }).collect::<Vec<_>>())
                };
                let (wall_short, wall_long, cpu_short, cpu_long) =
                    (pick(0, false), pick(1, false), pick(0, true), pick(1, true));
                let mut ratios: Vec<f64> = results[0].iter().zip(&results[1]).map(|(s, l)| l.1 / s.1).collect();
                println!(
                    "{kernel:?}, {name}: wall {wall_short:.1} / {wall_long:.1}, cpu {cpu_short:.1} / {cpu_long:.1} \
                     ({:.3}; median same-round cpu ratio {:.3})",
                    cpu_long / cpu_short,
                    median(&mut ratios)
                );
            }
        });
    }
}
