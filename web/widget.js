// The <smol-chat> widget (served at /widget.js): SmolChat on any page, from any origin.
//
//   <script type="module" src="https://your-smolchat-host/widget.js"></script>
//   <smol-chat bundle="..." system-prompt="You are a pirate." title="Ask me" theme="dark"></smol-chat>
//
// A custom element with an open Shadow DOM: a launcher button in the corner opens a chat panel
// (replies streamed and rendered as Markdown by markdown.js, code blocks and replies with Copy
// buttons, Send, Stop, a progress bar while the model loads). The host
// page's CSS cannot reach inside (selectors stop at the shadow root; the host element resets
// every inherited property with `all: initial !important`, which beats the page's !important
// rules) and the widget's CSS cannot leak out. Only px units are used, so a page that changes
// the root font size changes nothing either. Model output goes through markdown.js (marked ->
// DOMPurify allow-list, http(s) links only, raw HTML shown as text): never live HTML or script.
//
// Attributes:
//   bundle         a bundle id served next to widget.js ("my-lora" -> <widget dir>/models/my-lora/:
//                  letters, digits, '.', '_', '-'; compact / exact), or a bundle URL (relative to
//                  the page: anything with '/' or ':'); default: the compact
//                  SmolLM2 bundle next to widget.js
//                  (on another origin than the page's or SmolChat's only with allowed-origins)
//   allowed-origins  space-separated origins `bundle` may come from besides those two, or *
//   system-prompt  system prompt (default: the model's own); changing it clears the chat
//   title          panel title (default "SmolChat")
//   theme          light | dark | auto (the system's setting) (default light)
//   open           start with the panel open
//   preload        load the model at once instead of when the panel first opens
//   max-tokens, temperature   generation settings for every reply (engine ranges apply)
// CSS custom properties on the element: --smol-chat-right, --smol-chat-bottom (20px),
// --smol-chat-z (2147483000), --smol-chat-accent.
// JS: el.load() -> Promise<SmolChat>, el.bot, el.send(text) -> Promise<reply>, el.stop(),
// el.open(), el.close(), el.toggle(), el.info(). Events (bubbling, composed):
// smolchat-ready {detail: info}, smolchat-reply {detail: reply}, smolchat-error {detail: error}.
//
// Cross-origin: smolchat.js starts its worker through a same-origin blob: URL when imported
// from another origin, and the server sends CORS + CORP headers. A host page that is not
// cross-origin isolated runs the model on 1 thread; the status line and info() say so.
//
// What this module ignores: how the model runs (smolchat.js and below).

import { SmolChat, BUNDLE_ID, bundleIdUrl } from './smolchat.js';
import { STAGES } from './protocol.js';
import { replyView, copyButton, adoptMarkdownCss } from './markdown.js';

const DEFAULT_BUNDLE = 'smollm2-135m-instruct-compact';

export function resolveBundleUrl(attr, base = document.baseURI) {
  if (!attr) return new URL(`./models/${DEFAULT_BUNDLE}/`, import.meta.url).href;
  if (BUNDLE_ID.test(attr)) return bundleIdUrl(attr);   // an id: models/<id>/ next to widget.js
  return new URL(attr, base).href;
}

const CSS = `
:host {
  all: initial !important;
  display: block !important;
  position: fixed !important;
  right: var(--smol-chat-right, 20px) !important;
  bottom: var(--smol-chat-bottom, 20px) !important;
  z-index: var(--smol-chat-z, 2147483000) !important;
}
:host([hidden]) { display: none !important; }
.root {
  all: initial;
  --accent: var(--smol-chat-accent, #2563eb);
  --bg: #ffffff; --fg: #111827; --muted: #6b7280; --line: #e5e7eb;
  --user-bg: var(--accent); --user-fg: #ffffff; --bot-bg: #f3f4f6; --bot-fg: #111827;
  --error-bg: #fef2f2; --error-fg: #991b1b; --code-bg: #e5e7eb;
  display: flex; flex-direction: column; align-items: flex-end; gap: 12px;
  font: 400 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); text-align: left; letter-spacing: normal; word-spacing: normal;
  text-transform: none; text-shadow: none; direction: ltr;
}
:host([theme="dark"]) .root {
  --bg: #111827; --fg: #f9fafb; --muted: #9ca3af; --line: #374151;
  --bot-bg: #1f2937; --bot-fg: #f9fafb; --error-bg: #450a0a; --error-fg: #fecaca; --code-bg: #111827;
}
@media (prefers-color-scheme: dark) {
  :host([theme="auto"]) .root {
    --bg: #111827; --fg: #f9fafb; --muted: #9ca3af; --line: #374151;
    --bot-bg: #1f2937; --bot-fg: #f9fafb; --error-bg: #450a0a; --error-fg: #fecaca; --code-bg: #111827;
  }
}
.root *, .root *::before, .root *::after { box-sizing: border-box; }
button, textarea { font: inherit; color: inherit; margin: 0; }
[hidden] { display: none !important; }
.launcher {
  display: inline-flex; align-items: center; gap: 8px; height: 48px; padding: 0 18px;
  border: 0; border-radius: 24px; background: var(--accent); color: #ffffff; cursor: pointer;
  font-weight: 600; box-shadow: 0 4px 14px rgba(0, 0, 0, 0.25);
}
.launcher svg { width: 20px; height: 20px; fill: currentColor; }
.panel {
  display: flex; flex-direction: column; width: 360px; height: 520px;
  max-width: calc(100vw - 40px); max-height: calc(100vh - 100px);
  background: var(--bg); color: var(--fg); border: 1px solid var(--line); border-radius: 12px;
  box-shadow: 0 10px 30px rgba(0, 0, 0, 0.25); overflow: hidden;
}
header { display: flex; align-items: center; gap: 8px; padding: 10px 12px; border-bottom: 1px solid var(--line); }
h2 { margin: 0; font-size: 15px; font-weight: 600; flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.icon { border: 0; background: transparent; cursor: pointer; width: 28px; height: 28px; border-radius: 6px; color: var(--muted); font-size: 18px; line-height: 28px; padding: 0; }
.icon:hover { background: var(--line); }
.status { margin: 0; padding: 4px 12px; font-size: 12px; color: var(--muted); border-bottom: 1px solid var(--line); }
.progress { padding: 8px 12px; border-bottom: 1px solid var(--line); }
.track { height: 6px; border-radius: 3px; background: var(--line); overflow: hidden; }
.fill { height: 100%; width: 0; background: var(--accent); transition: width 0.2s; }
.progress-label { margin: 4px 0 0; font-size: 12px; color: var(--muted); }
.messages { flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 8px; }
.msg { margin: 0; padding: 8px 12px; border-radius: 12px; max-width: 85%; white-space: pre-wrap; overflow-wrap: anywhere; }
.msg.user { align-self: flex-end; background: var(--user-bg); color: var(--user-fg); }
.msg.assistant { align-self: flex-start; background: var(--bot-bg); color: var(--bot-fg); }
.msg.assistant { white-space: normal; }
.msg.assistant.streaming .md::after { content: "\\258D"; opacity: 0.6; }
.msg .reply-copy { margin-top: 4px; border: 0; background: transparent; color: var(--muted); font-size: 12px; padding: 0; cursor: pointer; }
.msg .reply-copy:hover { color: var(--accent); }
.error { margin: 0; padding: 8px 12px; background: var(--error-bg); color: var(--error-fg); font-size: 13px; }
form { display: flex; gap: 8px; padding: 10px 12px; border-top: 1px solid var(--line); }
textarea {
  flex: 1; resize: none; height: 40px; padding: 9px 10px; border: 1px solid var(--line);
  border-radius: 8px; background: var(--bg); color: var(--fg); line-height: 20px;
}
textarea:focus { outline: 2px solid var(--accent); outline-offset: -1px; }
.send, .stop { border: 0; border-radius: 8px; padding: 0 14px; cursor: pointer; font-weight: 600; height: 40px; }
.send { background: var(--accent); color: #ffffff; }
.stop { background: var(--line); color: var(--fg); }
.send:disabled, .stop:disabled { opacity: 0.45; cursor: default; }
`;

const HTML = `
<div class="root" part="root">
  <section class="panel" part="panel" role="dialog" aria-label="Chat" hidden>
    <header><h2 class="title">SmolChat</h2><button class="icon close" type="button" aria-label="Close the chat">×</button></header>
    <p class="status" aria-live="polite">Not loaded</p>
    <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="0" hidden>
      <div class="track"><div class="fill"></div></div>
      <p class="progress-label">Preparing…</p>
    </div>
    <div class="messages" role="log" aria-live="polite" aria-label="Conversation"></div>
    <p class="error" role="alert" hidden></p>
    <form autocomplete="off">
      <textarea rows="1" aria-label="Message" placeholder="Ask something…" title="Enter sends, Shift+Enter new line, Esc stops" disabled></textarea>
      <button class="send" type="submit" disabled>Send</button>
      <button class="stop" type="button" disabled>Stop</button>
    </form>
  </section>
  <button class="launcher" part="launcher" type="button" aria-expanded="false">
    <svg viewBox="0 0 24 24" aria-hidden="true"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg>
    <span class="launcher-label">Chat</span>
  </button>
</div>`;

const LABELS = Object.fromEntries(STAGES.map((s) => [s.stage, s.label]));
const MB = (n) => (n / 1048576).toFixed(1);

export class SmolChatElement extends HTMLElement {
  static observedAttributes = ['title', 'theme', 'system-prompt', 'open'];

  #ui = {};
  #bot = null;
  #loading = null;
  #controller = null;
  #busy = false;

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${CSS}</style>${HTML}`;   // static markup only; model text: markdown.js
    adoptMarkdownCss(root);
    const q = (sel) => root.querySelector(sel);
    this.#ui = {
      panel: q('.panel'), launcher: q('.launcher'), title: q('.title'), close: q('.close'),
      status: q('.status'), progress: q('.progress'), fill: q('.fill'), progressLabel: q('.progress-label'),
      messages: q('.messages'), error: q('.error'), form: q('form'), input: q('textarea'),
      send: q('.send'), stop: q('.stop'),
    };
    const ui = this.#ui;
    ui.launcher.addEventListener('click', () => this.toggle());
    ui.close.addEventListener('click', () => this.close());
    ui.form.addEventListener('submit', (e) => { e.preventDefault(); this.#submit(); });
    ui.stop.addEventListener('click', () => this.stop());
    ui.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.#submit(); }
      else if (e.key === 'Escape') { this.stop(); }
    });
  }

  connectedCallback() {
    this.#render();
    if (this.hasAttribute('open')) this.open();
    if (this.hasAttribute('preload')) this.load().catch(() => {});
  }

  disconnectedCallback() {
    // Moved within the page: connected again at once. Removed: free the worker and its memory.
    queueMicrotask(() => {
      if (this.isConnected || !this.#bot) return;
      this.stop();
      this.#bot.unload().catch(() => {});
      this.#bot = null;
      this.#loading = null;
    });
  }

  attributeChangedCallback(name, old, value) {
    if (old === value) return;
    if (name === 'system-prompt' && this.#bot) {
      this.#bot.setSystemPrompt(value || null).then(() => this.#clearMessages(), (e) => this.#fail(e));
    }
    if (name === 'open' && this.isConnected) (value === null ? this.close() : this.open());
    this.#render();
  }

  get bot() { return this.#bot; }

  open() {
    this.#ui.panel.hidden = false;
    this.#ui.launcher.setAttribute('aria-expanded', 'true');
    this.load().catch(() => {});
    if (!this.#ui.input.disabled) this.#ui.input.focus();
  }

  close() {
    this.#ui.panel.hidden = true;
    this.#ui.launcher.setAttribute('aria-expanded', 'false');
  }

  toggle() { if (this.#ui.panel.hidden) this.open(); else this.close(); }

  // Load the model once; later calls return the same promise.
  load() {
    if (this.#loading) return this.#loading;
    const ui = this.#ui;
    ui.progress.hidden = false;
    ui.error.hidden = true;
    this.#setStatus('Loading the model…');
    this.#loading = SmolChat.load({
      bundleUrl: resolveBundleUrl(this.getAttribute('bundle')),
      systemPrompt: this.getAttribute('system-prompt') || undefined,
      // space-separated origins a `bundle` on another origin may come from (or '*'); without
      // it only the page's origin and SmolChat's own are accepted (issue 20)
      allowedOrigins: (this.getAttribute('allowed-origins') || '').split(/\s+/).filter(Boolean),
      onProgress: (p) => this.#progress(p),
    }).then(async (bot) => {
      this.#bot = bot;
      const info = await bot.info();
      ui.progress.hidden = true;
      this.#threadsNote = threadsNote(info);
      this.#setStatus(describe(info));
      this.#setBusy(false);
      if (!ui.panel.hidden) ui.input.focus();
      this.#emit('smolchat-ready', info);
      return bot;
    }, (e) => {
      this.#loading = null;   // a later open() retries
      ui.progress.hidden = true;
      this.#setStatus('Not loaded');
      this.#fail(e);
      throw e;
    });
    return this.#loading;
  }

  info() { return this.load().then((bot) => bot.info()); }

  // Send a message as if typed; resolves with the reply (rejects with AbortError on stop).
  async send(text) {
    const bot = await this.load();
    if (this.#busy) throw Object.assign(new Error('a reply is still streaming: stop it or wait'), { name: 'InvalidStateError' });
    const ui = this.#ui;
    ui.error.hidden = true;
    const asked = this.#append('user', text);
    const bubble = this.#append('assistant', '');
    const body = bubble.firstChild;
    const view = replyView(body);
    let shown = '';
    bubble.classList.add('streaming');
    this.#controller = new AbortController();
    this.#setBusy(true);
    try {
      const reply = await bot.chat(text, {
        signal: this.#controller.signal, ...this.#settings(),
        onToken: (piece) => { shown += piece; view.update(shown); requestAnimationFrame(() => this.#scroll()); },
      });
      this.#finishBubble(bubble, view, reply);
      this.#setStatus(`${describeTimings(reply)} · ${this.#threadsNote}`);
      this.#emit('smolchat-reply', reply);
      return reply;
    } catch (e) {
      if (e.name === 'AbortError') {
        bubble.dataset.finish = 'abort';
        if (e.reply) this.#finishBubble(bubble, view, e.reply); else view.finish(shown);
        this.#setStatus('Stopped');
      } else {
        // The engine keeps no half exchange after an error: the panel neither; the text goes
        // back into the box unless something new was typed.
        view.finish('');
        bubble.remove();
        asked.remove();
        if (!ui.input.value.trim()) ui.input.value = text;
        this.#fail(e);
      }
      throw e;
    } finally {
      bubble.classList.remove('streaming');
      this.#controller = null;
      this.#setBusy(false);
      if (!ui.panel.hidden) ui.input.focus();
    }
  }

  stop() { if (this.#controller) this.#controller.abort(); }

  // -- internals ------------------------------------------------------------------------------
  #threadsNote = '';

  #settings() {
    const s = {};
    const num = (name) => (this.hasAttribute(name) ? Number(this.getAttribute(name)) : undefined);
    if (num('max-tokens') !== undefined) s.maxTokens = num('max-tokens');
    if (num('temperature') !== undefined) s.temperature = num('temperature');
    return s;
  }

  #submit() {
    const text = this.#ui.input.value.trim();
    if (!text || this.#busy || !this.#bot) return;
    this.#ui.input.value = '';
    this.send(text).catch(() => {});   // shown in the panel
  }

  // user: <p class="msg user">text</p>; assistant: <div class="msg assistant"><div class="md">
  #append(role, text) {
    const el = document.createElement(role === 'assistant' ? 'div' : 'p');
    el.className = `msg ${role}`;
    if (role === 'assistant') {
      const body = document.createElement('div');
      body.className = 'md';
      el.appendChild(body);
    } else {
      el.appendChild(document.createTextNode(text));
    }
    this.#ui.messages.appendChild(el);
    this.#scroll();
    return el;
  }

  // The final render and a Copy button for the whole reply (its Markdown text).
  #finishBubble(bubble, view, reply) {
    view.finish(reply.text);
    bubble.dataset.raw = reply.text;
    bubble.appendChild(copyButton(() => reply.text, 'reply-copy', 'Copy the reply'));
    this.#scroll();
  }

  #clearMessages() { this.#ui.messages.replaceChildren(); }
  #scroll() { const m = this.#ui.messages; m.scrollTop = m.scrollHeight; }

  #setBusy(busy) {
    const ui = this.#ui;
    this.#busy = busy;
    const ready = !!this.#bot;
    ui.input.disabled = !ready;
    ui.send.disabled = !ready || busy;
    ui.stop.disabled = !busy;
  }

  #setStatus(text) { this.#ui.status.textContent = text; }

  #progress({ stage, percent, loaded, total }) {
    const ui = this.#ui;
    const pct = Math.max(0, Math.min(100, percent || 0));
    ui.fill.style.width = `${pct}%`;
    ui.progress.setAttribute('aria-valuenow', String(Math.round(pct)));
    // the bar shows the whole load; the label the step (and the bytes while downloading)
    const step = STAGES.findIndex((s) => s.stage === stage);
    const head = `${step >= 0 ? `Step ${step + 1} of ${STAGES.length}: ` : ''}${LABELS[stage] || stage}`;
    ui.progressLabel.textContent = stage === 'download' && total ? `${head} (${MB(loaded)} of ${MB(total)} MB)` : `${head}…`;
  }

  #fail(e) {
    const ui = this.#ui;
    ui.error.textContent = e && e.message ? e.message : String(e);
    ui.error.hidden = false;
    this.#emit('smolchat-error', e);
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  #render() {
    const title = this.getAttribute('title') || 'SmolChat';
    this.#ui.title.textContent = title;
    this.#ui.panel.setAttribute('aria-label', title);
    this.#ui.launcher.querySelector('.launcher-label').textContent = title;
  }

}

function threadsNote(info) {
  return info.cross_origin_isolated ? `${info.threads} threads`
    : `${info.threads} thread (page not cross-origin isolated)`;
}

function describe(info) {
  const source = info.from_cache ? 'from cache' : (String(info.cache || '').startsWith('disabled') ? 'not cached' : 'downloaded');
  return `Ready · ${threadsNote(info)} · ${source}`;
}

function describeTimings(reply) {
  const t = reply.timings || {};
  return `${reply.completion_tokens} tokens · ${t.decode_tok_s} tok/s · first token ${Math.round(t.ttft_ms)} ms`;
}

if (!customElements.get('smol-chat')) customElements.define('smol-chat', SmolChatElement);
