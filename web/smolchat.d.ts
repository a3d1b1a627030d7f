// TypeScript declarations for SmolChat, served at /smolchat.d.ts:
//   the JS API (/smolchat.js), its OpenAI-shaped surface (bot.chat.completions.create) and
//   the <smol-chat> widget (/widget.js).
//
//   // tsconfig: "paths": { "https://your-host/smolchat.js": ["./smolchat.d.ts"] }, or
//   /// <reference path="./smolchat.d.ts" /> and declare module aliases as you import them.

// ---------------------------------------------------------------------------------------------
// Errors (errors.js)
// ---------------------------------------------------------------------------------------------

export type SmolChatErrorKind =
  | 'model_not_loaded' | 'invalid_setting' | 'context_window_exceeded' | 'bundle_missing'
  | 'bundle_corrupt' | 'kv_cache_mismatch' | 'aborted' | 'out_of_memory' | 'storage_full'
  | 'invalid_input' | 'network' | 'site_incomplete' | 'unsupported_template' | 'internal';

/** Every rejection is one of these; `name` is 'AbortError' for an aborted call. */
export declare class SmolChatError extends Error {
  kind: SmolChatErrorKind;
  /** 'ModelNotLoaded' | 'InvalidSetting' | 'ContextWindowExceeded' | 'BundleMissing' |
   *  'BundleCorrupt' | 'KVCacheMismatch' | 'AbortError' | 'OutOfMemory' | 'StorageFull' |
   *  'InvalidInput' | 'NetworkError' (a download failed, stalled or was cut; details {url,
   *  retryable: true}: load again) | 'SiteIncomplete' (a runtime file of the site is missing:
   *  rebuild it with ./build.sh site) | 'UnsupportedTemplate' (the bundle's chat template
   *  cannot be rendered; the message says why) | 'InternalError' */
  name: string;
  /** e.g. {field, value, allowed} for InvalidSetting; {needed, window, ...} for ContextWindowExceeded */
  details: Record<string, unknown>;
  /** On an AbortError from chat/instruct/generate: the partial reply (finish_reason 'abort'). */
  reply?: Reply;
  /** On an AbortError from chat.completions.create: the partial ChatCompletion. */
  completion?: ChatCompletion;
  toJSON(): { kind: SmolChatErrorKind; name: string; message: string; details: Record<string, unknown> };
}

// ---------------------------------------------------------------------------------------------
// JS API (smolchat.js)
// ---------------------------------------------------------------------------------------------

export type LoadStage = 'download' | 'python' | 'compile' | 'warmup';

export interface LoadProgress {
  /** the first stage not finished (stages run side by side; a byte update says 'download') */
  stage: LoadStage;
  /** overall percent, 0..100, over all stages; never goes down */
  percent: number;
  /** what every part under way is doing, e.g. "Reading the model: 35.2 / 69.8 MB · Starting Python" */
  message: string;
  /** download stage: bytes so far / bytes in all (from the network or Cache Storage) */
  loaded?: number;
  total?: number;
}

export interface LoadOptions {
  /** A bundle id served next to smolchat.js (`models/<id>/`): 'compact', 'exact' or the id a
   *  build gave (`./build.sh bundle --adapter DIR` prints it), e.g. 'my-lora'. An id is 1-100
   *  letters, digits, '.', '_' or '-' starting with a letter or digit (else InvalidSetting);
   *  one not served ends the load in BundleMissing. Give `bundle` or `bundleUrl`, not both. */
  bundle?: string;
  /** Bundle folder URL, relative to the page. Default: the compact bundle next to smolchat.js. */
  bundleUrl?: string;
  onProgress?: (progress: LoadProgress) => void;
  /** WASM threads; default 2 when the page is cross-origin isolated, else (always) 1. */
  threads?: number;
  systemPrompt?: string;
  /** tokens, default 2048 */
  contextWindow?: number;
  /** false: do not use Cache Storage (default true) */
  cache?: boolean;
  /** false: keep the KV cache in JS tensors through ORT's public session.run (default true:
   * in ORT's wasm heap, run through its own entry points; used where available) */
  heapKV?: boolean;
  /** false: ONNX Runtime computes the compact bundle's LM head (default true: our WebAssembly
   * SIMD kernel, web/kernels/lm_head.c, the same logits bit for bit, ~4x faster) */
  lmHead?: boolean;
  /** false: expand the int4 weights to int8 in JavaScript (default true: our WebAssembly SIMD
   * kernel, web/kernels/expand.c, the same bytes, ~3x faster; info().expand says which ran) */
  expandKernel?: boolean;
  /** Origins (or '*') a bundleUrl may come from besides the page's and SmolChat's own;
   *  another origin is an InvalidSetting error. Widget: allowed-origins="https://a https://b". */
  allowedOrigins?: string[] | '*';
  /** ms a download may go without data before the load fails with NetworkError (default 30000) */
  stallTimeoutMs?: number;
}

/** Generation options; JS types are checked before the worker (NaN, Infinity, BigInt, objects
 *  are InvalidSetting with the value as given), ranges by the engine (InvalidSetting with the range). */
export interface GenerateOptions {
  /** [1, 8192], eos included */
  maxTokens?: number;
  /** [0, 2]; 0 = greedy */
  temperature?: number;
  /** [1, 200] */
  topK?: number;
  /** (0, 1] */
  topP?: number;
  /** [1, 2]; 1 = off */
  repetitionPenalty?: number;
  /** [0, 2^32 - 1]; unset = random per reply */
  seed?: number;
  /** up to 8 strings of 1..64 characters; not part of the reply text */
  stop?: string | string[];
  /** default true: end a reply that loops (finish_reason 'repetition'); tokens before are unchanged */
  repetitionStop?: boolean;
  /** [-2, 2] (OpenAI): logit -= count * frequencyPenalty, count = times the reply generated the token */
  frequencyPenalty?: number;
  /** [-2, 2] (OpenAI): logit -= presencePenalty for every token the reply generated already */
  presencePenalty?: number;
  /** report each generated token's log-probability (Reply.logprobs) */
  logprobs?: boolean;
  /** [0, 20] alternatives per token (needs logprobs) */
  topLogprobs?: number;
  /** called with each streamed piece of text (complete UTF-8) */
  onToken?: (text: string) => void;
  /** abort: the call rejects with an error named 'AbortError' (its .reply is the partial reply) */
  signal?: AbortSignal;
}

/** 'repetition': the reply started repeating one span over and over and was ended early
 *  (GenerateOptions.repetitionStop) instead of running to maxTokens. */
export type FinishReason = 'stop' | 'length' | 'abort' | 'context' | 'repetition';

/** Where the reply's decode steps spent their time: ms summed over the steps, measured in the
 *  worker. Prefill and the first token's sampling are not included (see timings). One step =
 *  forwarding one generated token + choosing the next, so steps = completion_tokens - 1, or
 *  completion_tokens when aborted. The four parts sum to the decode wall time. */
export interface DecodeProfile {
  /** inside ONNX Runtime Web's session.run (performance.now() around the awaited promise) */
  ort_run_ms: number;
  /** the rest of the backend's forward: feeds to JS tensors, outputs, JS <-> Python hops */
  interop_ms: number;
  /** choosing the next token: top-k over the logits (JS) + the Python sampler */
  sampling_ms: number;
  /** the rest of the engine's step: loop bookkeeping, detokenising, stop checks, streaming */
  python_ms: number;
  steps: number;
}

export interface Reply {
  text: string;
  finish_reason: FinishReason;
  prompt_tokens: number;
  completion_tokens: number;
  prompt_token_ids: number[];
  output_token_ids: number[];
  timings: { ttft_ms: number; prefill_ms: number; decode_tok_s: number; total_ms: number };
  seed: number;
  cached_prompt_tokens: number;
  dropped_exchanges: number;
  profile: DecodeProfile;
  /** with logprobs: one entry per generated token; log-softmax over the whole vocabulary of
   *  the logits after the penalties, before temperature/top-k/top-p. null otherwise. */
  logprobs: Array<TokenLogprob & { top_logprobs: TokenLogprob[] }> | null;
}

export interface TokenLogprob {
  token_id: number;
  token: string;
  /** the token's raw bytes (a token may hold part of a UTF-8 character) */
  bytes: number[];
  logprob: number;
}

/** A setting's bounds as the engine checks them (Info.limits). */
export interface SettingRange {
  type: 'integer' | 'number';
  min: number;
  max: number;
  /** true: min itself is not allowed (top_p) */
  min_exclusive: boolean;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface Info {
  model_name: string;
  bundle_id: string;
  bundle_hash: string;
  bundle_url: string;
  threads: number;
  cross_origin_isolated: boolean;
  /** 'wasm-heap': the KV cache stays in ORT's wasm heap between steps; 'js-tensors': it is
   * copied in and out on each step (the fallback) */
  kv_cache: 'wasm-heap' | 'js-tensors';
  /** why the KV cache is not in the wasm heap; null when it is */
  kv_cache_note: string | null;
  /** 'kernel': the compact bundle's LM head runs in web/kernels/lm_head.c (WebAssembly SIMD,
   * the same logits as ORT's bit for bit); 'ort': ONNX Runtime computes it */
  lm_head: 'kernel' | 'ort';
  /** why ORT computes the LM head (the exact bundle's is float32; lmHead: false; ...); null
   * when the kernel does */
  lm_head_note: string | null;
  context_window: number;
  system_prompt: string | null;
  load_ms: number;
  /** end of reading + verifying the bundle, ms since the load began (stages.read_verify) */
  download_ms: number;
  /** ORT session creation (stages.session) */
  compile_ms: number;
  warmup_ms: number;
  /** the load's timeline: {name: [start_ms, end_ms]} since it began (README "Load time") */
  stages: Record<string, [number, number]>;
  /** MB of ORT's and Pyodide's wasm heaps as each of the Pyodide worker's stages ended (null: not reachable) */
  heaps_mb: Record<string, { ort: number | null; python: number | null }>;
  /** when the load began (performance.timeOrigin + its start, ms since the epoch) */
  t0_epoch_ms: number;
  /** 'kernel': the load helper expanded int4 -> int8 in web/kernels/expand.c (WebAssembly
   * SIMD, the same bytes); 'js': in runtime_form.js */
  expand: 'kernel' | 'js';
  /** why JS expanded (expandKernel: false, the kernel missing, the exact bundle); null when
   * the kernel did */
  expand_note: string | null;
  /** ms the kernel's calls took (0 when it did not run) */
  expand_kernel_ms: number;
  /** Pyodide memory snapshot: 'hit' (kept by an earlier visit) | 'site' (the site's own, made when it was
   * built; kept for the next visit) | 'stored' | 'miss' | 'rejected: <why>' | 'disabled: <why>' */
  python_snapshot: string;
  /** MB of the Python snapshot the restore left unwritten because they are zeros already (0 without a restore). */
  python_snapshot_zero_mb: number;
  download_bytes: number;
  /** every bundle file came from Cache Storage */
  from_cache: boolean;
  /** 'hit' | 'miss' | 'disabled: <reason>' */
  cache: string;
  /** 'smolchat-<bundle_id>' */
  cache_name: string;
  /** bundle bytes fetched over the network by this load (manifest.json not counted) */
  network_bytes: number;
  /** the engine's ranges for max_tokens, temperature, top_k, top_p, repetition_penalty,
   *  frequency_penalty, presence_penalty, top_logprobs, seed (settings.py RANGES) */
  limits: Record<string, SettingRange>;
  [key: string]: unknown;
}

/** bot.chat: call it for a chat turn; bot.chat.completions.create is the OpenAI shape. */
export interface ChatFunction {
  (message: string, opts?: GenerateOptions): Promise<Reply>;
  completions: Completions;
}

export declare class SmolChat {
  static load(options?: LoadOptions): Promise<SmolChat>;
  /** A chat turn with history; also carries .completions.create (OpenAI shape). */
  chat: ChatFunction;
  /** One instruction, no history; the conversation is left as it was. */
  instruct(instruction: string, opts?: GenerateOptions): Promise<Reply>;
  /** Raw continuation of a prompt, no chat template. */
  generate(prompt: string, opts?: GenerateOptions): Promise<Reply>;
  /** null: the model's default. Clears the conversation. */
  setSystemPrompt(text: string | null): Promise<null>;
  clearConversation(): Promise<null>;
  getConversationHistory(): Promise<ChatMessage[]>;
  /** An optional leading system message, then whole user/assistant pairs. */
  setConversationHistory(messages: ChatMessage[]): Promise<null>;
  /** The engine's tokenizer: plain text -> ids (no special tokens added). */
  encode(text: string): Promise<number[]>;
  /** ids -> text (UTF-8; control tokens as their text). */
  decode(ids: number[]): Promise<string>;
  /** The prompt ids chat() feeds for these messages (the system prompt first when none is given). */
  applyChatTemplate(messages: ChatMessage[], options?: { addGenerationPrompt?: boolean }): Promise<number[]>;
  /** WebLLM: clearConversation(); keepStats keeps runtimeStatsText()'s reply. */
  resetChat(keepStats?: boolean): Promise<null>;
  /** WebLLM: every running reply stops and ends normally with finish_reason 'abort'. */
  interruptGenerate(): Promise<void>;
  /** WebLLM: the newest reply's text (so far, while it streams). */
  getMessage(): Promise<string>;
  /** WebLLM: "prefill: X tokens/s, decoding: Y tokens/s" of the newest reply. */
  runtimeStatsText(): Promise<string>;
  info(): Promise<Info>;
  /** live_tensors: ort.Tensors alive between calls (0 on the heap path); heap_blocks: wasm
   * heap blocks the KV cache path holds (null on the JS-tensor path) */
  health(): Promise<{ status: string; reason: string | null; live_tensors?: number; heap_blocks?: number | null }>;
  readonly loadInfo: Info | null;
  unload(): Promise<void>;
}

export declare function defaultBundleUrl(): string;
export default SmolChat;

// ---------------------------------------------------------------------------------------------
// OpenAI shape (openai.js): bot.chat.completions.create
// ---------------------------------------------------------------------------------------------

export type ContentPart = { type: 'text'; text: string };

export interface ChatCompletionMessageParam {
  /** 'developer' is taken as 'system'; only messages[0] may be one */
  role: 'system' | 'developer' | 'user' | 'assistant';
  content: string | ContentPart[];
}

export interface ChatCompletionCreateParams {
  /** the last one must be from the user */
  messages: ChatCompletionMessageParam[];
  /** ignored (one instance runs one model); responses name the bundle id */
  model?: string | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  /** only 1 */
  n?: 1 | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  stop?: string | string[] | null;
  seed?: number | null;
  /** [-2, 2], OpenAI's definitions over the tokens the reply generated */
  frequency_penalty?: number | null;
  presence_penalty?: number | null;
  logprobs?: boolean | null;
  /** [0, 20], needs logprobs */
  top_logprobs?: number | null;
  /** accepted and ignored */
  user?: string | null;
  /** only text */
  response_format?: { type: 'text' } | null;
  /** extensions (WebLLM has them too) */
  top_k?: number | null;
  repetition_penalty?: number | null;
}

export interface ChatCompletionLogprobs {
  content: Array<TokenLogprob & { top_logprobs: TokenLogprob[] }>;
}

/** 'context' from the engine is reported as 'length', 'repetition' as 'stop' (usage.extra.finish_reason
 *  keeps the engine's); 'abort' only when cancelled from elsewhere. */
export type ChatCompletionFinishReason = 'stop' | 'length' | 'abort';

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  /** WebLLM's names (seconds, tokens/s) and SmolChat's (ms, tok/s) */
  extra: {
    time_to_first_token_s: number; time_per_output_token_s: number; e2e_latency_s: number;
    /** prompt tokens forwarded (not reused from the KV cache) per second of prefill */
    prefill_tokens_per_s: number; decode_tokens_per_s: number;
    ttft_ms: number; prefill_ms: number; decode_tok_s: number; total_ms: number; seed: number;
    /** the engine's own finish_reason ('repetition' where choices say 'stop') */
    finish_reason: FinishReason;
  };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  /** unix seconds */
  created: number;
  model: string;
  system_fingerprint: string | null;
  choices: Array<{
    index: 0;
    message: { role: 'assistant'; content: string };
    /** with logprobs: true */
    logprobs: ChatCompletionLogprobs | null;
    finish_reason: ChatCompletionFinishReason;
  }>;
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string | null;
  /** empty in the include_usage chunk */
  choices: Array<{
    index: 0;
    delta: { role?: 'assistant'; content?: string };
    /** with logprobs: every token's, on the chunk with finish_reason */
    logprobs: ChatCompletionLogprobs | null;
    finish_reason: ChatCompletionFinishReason | null;
  }>;
  /** on the finish chunk, and on the include_usage chunk */
  usage?: CompletionUsage;
}

export interface ChatCompletionStream extends AsyncIterable<ChatCompletionChunk> {
  /** abort() cancels the reply; the iteration then throws an AbortError */
  controller: AbortController;
}

export interface Completions {
  create(body: ChatCompletionCreateParams & { stream: true }, options?: { signal?: AbortSignal }): Promise<ChatCompletionStream>;
  create(body: ChatCompletionCreateParams & { stream?: false | null }, options?: { signal?: AbortSignal }): Promise<ChatCompletion>;
  create(body: ChatCompletionCreateParams, options?: { signal?: AbortSignal }): Promise<ChatCompletion | ChatCompletionStream>;
}

// ---------------------------------------------------------------------------------------------
// Widget (widget.js): <smol-chat>
// ---------------------------------------------------------------------------------------------

export declare class SmolChatElement extends HTMLElement {
  /** the loaded instance, or null before load */
  readonly bot: SmolChat | null;
  /** load the model (once; later calls return the same promise) */
  load(): Promise<SmolChat>;
  info(): Promise<Info>;
  /** send as if typed; rejects with AbortError when stopped */
  send(text: string): Promise<Reply>;
  stop(): void;
  open(): void;
  close(): void;
  toggle(): void;
}

/** The widget's `bundle` attribute -> a bundle URL: a bundle id ('my-lora', 'compact') is
 *  models/<id>/ next to widget.js, anything else a URL relative to `base` (the page). */
export declare function resolveBundleUrl(attr: string | null, base?: string): string;
/** A bundle id -> the URL of models/<id>/ next to `base` (default: next to smolchat.js), or an
 *  InvalidSetting error naming the rule. */
export declare function bundleIdUrl(id: string, base?: string): string;

declare global {
  interface HTMLElementTagNameMap {
    'smol-chat': SmolChatElement;
  }
  interface HTMLElementEventMap {
    'smolchat-ready': CustomEvent<Info>;
    'smolchat-reply': CustomEvent<Reply>;
    'smolchat-error': CustomEvent<SmolChatError>;
  }
}
