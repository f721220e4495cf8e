// The one interface the UI talks to the App through. Each method is one server RPC (`crates/sepchat-server/src/rpc.rs`),
// named as there, taking the same JSON arguments by the same names, so a transport only has to carry them: over
// HTTP (`http.ts`) or, later, Tauri commands. `complete`, `stop_completion`, and the path-based `export`/`import`
// are left out: this UI saves and reads files in the browser (`render_export`, `import_document`) and has no raw
// completion view.

import type {
  ApiError,
  CacheMap,
  ChatEvent,
  ConversationInfo,
  ConversationView,
  EditMessageRequest,
  ExportFormat,
  Health,
  ImportResult,
  LoadModelRequest,
  ModelInfo,
  NewConversationRequest,
  RegenerateRequest,
  Sampling,
  SearchHit,
  SendMessageRequest,
  SendResult,
} from '../api/types';

export interface ConversationArgs {
  conversation_id: number;
}

export interface RenameArgs {
  conversation_id: number;
  title: string;
}

export interface PinArgs {
  conversation_id: number;
  pinned: boolean;
}

export interface SearchArgs {
  query: string;
  limit?: number;
}

export interface SystemPromptArgs {
  conversation_id: number;
  /** `null`: the app's default; `""`: none. */
  system_prompt: string | null;
}

export interface SamplingArgs {
  conversation_id: number;
  sampling: Sampling;
}

export interface CacheProfileArgs {
  conversation_id: number;
  /** `null`: the app's default. */
  cache_profile: string | null;
}

export interface CacheMapArgs {
  conversation_id: number;
  /** A cache spec or profile to simulate; `null`: the conversation's own. */
  cache: string | null;
}

export interface BranchArgs {
  conversation_id: number;
  message_id: number;
}

export interface RenderExportArgs {
  /** `null`: every conversation not in the trash. */
  conversation_ids: number[] | null;
  format: ExportFormat;
}

export interface ImportDocumentArgs {
  /** The text of a JSON export. */
  document: string;
}

/** Receives a generation's events in order, while it runs. */
export type ChatEventHandler = (event: ChatEvent) => void;

/** App-wide news the backend pushes without being asked: the desktop shell's events. */
export type Notice =
  | { kind: 'model_loaded'; model: ModelInfo }
  | { kind: 'model_error'; error: ApiError }
  | { kind: 'conversations_changed' };

/**
 * Every method resolves to the server's answer or rejects with an `ApiError` (`{code, message}`), never anything
 * else: network failures and malformed answers become code `internal`. The generating methods call `onEvent` for
 * each event and resolve to the final `SendResult`; aborting `signal` closes the stream, which stops the
 * generation on the server (the reply is kept as `stopped`).
 */
export interface Transport {
  health(): Promise<Health>;
  /**
   * Calls `handler` for each notice from now on, and resolves once the subscription is in place: a notice sent
   * before that is lost, so whoever reads state the notices keep current (say, `health` for the model the shell
   * loads at start) reads it after awaiting this. The desktop shell sends them (the model it loads at start in the
   * background, lists changed by another window); the HTTP server sends none, and the UI refreshes after its own
   * calls anyway.
   */
  onNotice(handler: (notice: Notice) => void): Promise<void>;

  load_model(request: LoadModelRequest): Promise<ModelInfo>;
  model_info(): Promise<ModelInfo | null>;

  create_conversation(request: NewConversationRequest): Promise<ConversationInfo>;
  list_conversations(): Promise<ConversationInfo[]>;
  list_trash(): Promise<ConversationInfo[]>;
  get_conversation(args: ConversationArgs): Promise<ConversationView>;
  rename_conversation(args: RenameArgs): Promise<ConversationInfo>;
  pin_conversation(args: PinArgs): Promise<ConversationInfo>;
  delete_conversation(args: ConversationArgs): Promise<ConversationInfo>;
  restore_conversation(args: ConversationArgs): Promise<ConversationInfo>;
  purge_conversation(args: ConversationArgs): Promise<void>;
  /** How many conversations were deleted. */
  empty_trash(): Promise<number>;
  search(args: SearchArgs): Promise<SearchHit[]>;

  set_system_prompt(args: SystemPromptArgs): Promise<ConversationInfo>;
  set_sampling(args: SamplingArgs): Promise<ConversationInfo>;
  set_cache_profile(args: CacheProfileArgs): Promise<ConversationInfo>;
  /** The branch replayed through a cache of another (or its own) setting: the A/B switch and the token map. */
  cache_map(args: CacheMapArgs): Promise<CacheMap>;

  send_message(request: SendMessageRequest, onEvent: ChatEventHandler, signal?: AbortSignal): Promise<SendResult>;
  regenerate(request: RegenerateRequest, onEvent: ChatEventHandler, signal?: AbortSignal): Promise<SendResult>;
  edit_message(request: EditMessageRequest, onEvent: ChatEventHandler, signal?: AbortSignal): Promise<SendResult>;
  /** `false` when nothing was generating. */
  stop(args: ConversationArgs): Promise<boolean>;
  is_generating(args: ConversationArgs): Promise<boolean>;
  switch_branch(args: BranchArgs): Promise<ConversationView>;

  /** The export document's text. */
  render_export(args: RenderExportArgs): Promise<string>;
  import_document(args: ImportDocumentArgs): Promise<ImportResult>;
}
