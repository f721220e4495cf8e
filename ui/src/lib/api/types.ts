// The App's API as JSON, mirrored from crates/sepchat-core/src/api.rs (and the store's leaf types it re-exports).
// Field names are the Rust names; ids are the store's integers; timestamps are unix milliseconds (UTC).
// Keep this file in step with api.rs: the server's tests and the browser tests exercise both sides.

export type ErrorCode =
  | 'not_found'
  | 'invalid_input'
  | 'busy'
  | 'model'
  | 'storage'
  | 'engine'
  | 'io'
  | 'internal';

/** Every failure the server reports: a stable code to branch on and one line for people. */
export interface ApiError {
  code: ErrorCode;
  message: string;
}

export type Role = 'system' | 'user' | 'assistant';
export type MessageStatus = 'streaming' | 'done' | 'stopped' | 'interrupted' | 'error';

/** Per-conversation sampling; an absent field takes the app's default. */
export interface Sampling {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  repeat_penalty?: number;
  max_tokens?: number;
  seed?: number;
}

/** The engine's live KV cache readout (SEPLLM.md's panel). */
export interface KvStats {
  /** Every token processed in this conversation, template tokens included. */
  tokens_seen: number;
  slots_held: number;
  capacity: number;
  initial_held: number;
  initial_limit: number;
  separators_held: number;
  separators_limit: number;
  past_held: number;
  local_held: number;
  local_limit: number;
  /** Tokens that fit before the next compaction (a dense cache: before it is full). */
  tokens_to_next_compaction: number;
  bytes_held: number;
  /** Bytes a dense cache of every token seen would need. */
  bytes_dense: number;
  kept_ratio: number;
  kept_ratio_mean: number;
  slots_mean: number;
  slots_peak: number;
  dropped_separators: number;
  dropped_other: number;
  compactions: number;
  /** Distance back to the oldest non-initial slot held. */
  horizon: number;
}

/**
 * What a cache still holds of a piece of text: the block of the slots holding its tokens, `evicted`, or `unseen`
 * (text the cache was never fed: a message with no reply yet, whitespace the chat template trims).
 */
export type TokenState = 'initial' | 'separator' | 'past' | 'local' | 'evicted' | 'unseen';

/** A run of a message's text whose tokens share one state. */
export interface CacheMapSegment {
  text: string;
  state: TokenState;
}

/** One message of the branch: its segments concatenate to exactly its content. */
export interface MessageCacheMap {
  message_id: number;
  segments: CacheMapSegment[];
}

/**
 * `cache_map`: the conversation's active branch replayed, turn by turn as the engine fed it, through a cache of
 * some setting without running the model (the A/B switch and the token map).
 */
export interface CacheMap {
  conversation_id: number;
  /** The cache setting simulated, as a full spec. */
  cache_spec: string;
  /** The readout that cache would show after this history. */
  stats: KvStats;
  /** The branch's messages, root first. */
  messages: MessageCacheMap[];
  /**
   * False when a reply's stored text tokenizes to another number of tokens than the model generated (the
   * simulation re-tokenizes replies, whose ids are not stored), so its numbers may be off by those tokens.
   */
  exact: boolean;
}

/** Stored with each reply. `kv` (the full readout after the reply) and `cache_spec` are present on replies
 * generated since they were added; older ones only have kv_slots/kv_bytes. */
export interface MessageStats {
  time_to_first_token_ms?: number;
  prefill_tokens_per_s?: number;
  decode_tokens_per_s?: number;
  tokens_in?: number;
  tokens_out?: number;
  /** e.g. `end_of_turn`, `max_tokens`, `cancelled`, `error`. */
  stop_reason?: string;
  kv_slots?: number;
  kv_bytes?: number;
  kv?: KvStats;
  cache_spec?: string;
  [extra: string]: unknown;
}

/** A compaction of the KV cache, shown in the transcript after the message it happened during. */
export interface CompressionMarker {
  id: number;
  conversation_id: number;
  message_id: number;
  /** Tokens the conversation had fed through the cache when it compressed. */
  tokens_seen_at: number;
  slots_before: number;
  slots_after: number;
  dropped_separators: number;
  dropped_other: number;
  bytes_freed: number;
  created_at: number;
}

export interface ConversationInfo {
  id: number;
  title: string;
  /** `null`: the app's default system prompt; `""`: none at all. */
  system_prompt: string | null;
  sampling: Sampling;
  /** A cache spec (`default`, `low`, `high`, `dense`, `streaming:a=4,c=512`, `sep:a=4,s=64,w=256,c=512`); `null`: the app's default. */
  cache_profile: string | null;
  model_path: string | null;
  model_sha256: string | null;
  pinned: boolean;
  /** The last message of the branch on screen. */
  active_leaf_id: number | null;
  created_at: number;
  updated_at: number;
  /** Set while the conversation is in the trash. */
  deleted_at: number | null;
}

export interface MessageInfo {
  id: number;
  parent_id: number | null;
  role: Role;
  content: string;
  status: MessageStatus;
  /** Why generation failed (status `error`). */
  error: string | null;
  stats: MessageStats | null;
  created_at: number;
  updated_at: number;
  /** Every message with the same parent, this one included, oldest first. */
  sibling_ids: number[];
  /** This message's index in `sibling_ids`. */
  sibling_index: number;
}

/** A conversation as the chat view shows it: the row, the active branch (root first), its compression markers. */
export interface ConversationView {
  conversation: ConversationInfo;
  branch: MessageInfo[];
  markers: CompressionMarker[];
}

/** A search result; `snippet` wraps matched terms in U+0002 ... U+0003 and is raw text (escape it). */
export interface SearchHit {
  conversation_id: number;
  /** `null` when the hit is the conversation's title. */
  message_id: number | null;
  conversation_title: string;
  snippet: string;
}
export const SNIPPET_MATCH_START = '\u0002';
export const SNIPPET_MATCH_END = '\u0003';

export interface NewConversationRequest {
  title?: string | null;
  system_prompt?: string | null;
  sampling?: Sampling | null;
  cache_profile?: string | null;
}

export interface StreamOptions {
  kv_every_step?: boolean;
}

export interface SendMessageRequest {
  conversation_id: number;
  text: string;
  stream?: StreamOptions;
}

/** `message_id`: the reply to regenerate, or the user message to answer again. */
export interface RegenerateRequest {
  conversation_id: number;
  message_id: number;
  stream?: StreamOptions;
}

/** A new version of a user message, answered at once; the old one stays as another branch. */
export interface EditMessageRequest {
  conversation_id: number;
  message_id: number;
  text: string;
  stream?: StreamOptions;
}

export interface CompleteRequest {
  prompt: string;
  sampling?: Sampling;
  cache_profile?: string | null;
  stream?: StreamOptions;
}

export type CacheSource = 'fresh' | 'warm' | 'restored_from_snapshot' | 'replayed';

/** What a generation streams, in order: started and session (chat only), prefill while the prompt is fed,
 * kv and token while it runs, compression when the cache compacts, finished last (chat only). */
export type ChatEvent =
  | { type: 'started'; conversation_id: number; user_message_id: number; assistant_message_id: number }
  | { type: 'session'; source: CacheSource; detail: string | null }
  | { type: 'prefill'; done: number; total: number }
  | { type: 'token'; text: string }
  | { type: 'kv'; stats: KvStats }
  | { type: 'compression'; marker: CompressionMarker }
  | { type: 'finished'; result: SendResult };

export interface GenerationReport {
  /** `end_of_turn`, `max_tokens`, `cancelled` or `error`. */
  stop_reason: string;
  prompt_tokens: number;
  reused_tokens: number;
  generated_tokens: number;
  prefill_ms: number;
  time_to_first_token_ms: number;
  decode_ms: number;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
  kv: KvStats | null;
  /** The cache setting used, as a full spec (`sep:a=4,s=256,w=1024,c=2048`). */
  cache_spec: string;
  cache_evicts: boolean;
}

export interface SnapshotReport {
  path: string;
  slots: number;
  tokens_seen: number;
  bytes: number;
}

export interface SendResult {
  conversation_id: number;
  user_message_id: number;
  /** The reply as stored: status `done`, `stopped` or `error`. */
  message: MessageInfo;
  cache_source: CacheSource;
  cache_detail: string | null;
  report: GenerationReport;
  compressions: CompressionMarker[];
  snapshot: SnapshotReport | null;
}

export interface CompleteResult {
  text: string;
  error: string | null;
  report: GenerationReport;
}

export interface LoadModelRequest {
  /** `null`: the default model. */
  path?: string | null;
  /** `auto`, `cpu`, `cuda` or `metal`. */
  device?: string | null;
  /** `fast` (default) or `llama-cpp`: how the CPU attention rounds (see api.rs). */
  attention?: string | null;
}

export interface ModelInfo {
  path: string;
  file_name: string;
  sha256: string;
  device: string;
  context_length: number;
  weights_bytes: number;
  has_chat_template: boolean;
}

export type ExportFormat = 'md' | 'json' | 'html' | 'txt';

export interface ImportResult {
  conversation_ids: number[];
}

/** `GET /api/health`. */
export interface Health {
  status: 'ok';
  version: string;
  model: ModelInfo | null;
}
