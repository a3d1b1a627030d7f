// The chat page (index.html) on top of the JS API (smolchat.js). Replies are rendered as
// Markdown through markdown.js (marked -> DOMPurify allow-list): model text never becomes live
// HTML or script; user messages are inserted as text.
//
// Theme: follows prefers-color-scheme; the Theme button cycles auto -> dark -> light (kept in
// localStorage, set as <html data-theme>). Settings are checked against the engine's own ranges
// (info().limits) before a message is sent; a message that fails to send leaves no bubble and
// goes back into the input box.
//
// URL parameters: ?bundle=<bundle id | URL> (default: site.json default_bundle),
// ?threads=<n>. window.smolchatApp exposes {ready, bot, send, stop} for headless drivers.
//
// What this module ignores: the worker, Python and ONNX Runtime (all behind SmolChat).

import { SmolChat, bundleIdUrl } from './smolchat.js';
import { replyView, renderInto, copyButton, adoptMarkdownCss } from './markdown.js';
import { STAGES } from './protocol.js';

adoptMarkdownCss(document);

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), progress: $('progress'), progressFill: $('progress-fill'),
  progressLabel: $('progress-label'), settings: $('settings'), settingsToggle: $('settings-toggle'),
  systemPrompt: $('system-prompt'), applySystem: $('apply-system'), mode: $('mode'),
  temperature: $('temperature'), maxTokens: $('max-tokens'), error: $('error'),
  errorText: $('error-text'), errorClose: $('error-close'), messages: $('messages'),
  empty: $('empty'), composer: $('composer'), input: $('input'), send: $('send'),
  stop: $('stop'), clear: $('clear'), theme: $('theme'),
};

const STAGE_LABELS = {
  download: 'Downloading the model', python: 'Starting Python', compile: 'Compiling the model',
  warmup: 'Warming up',
};
const STAGE_ORDER = STAGES.map((s) => s.stage);

let bot = null;
let busy = false;
let controller = null;
let limits = {};   // the engine's setting ranges (info().limits: settings.py RANGES)

// ---- errors in plain words -------------------------------------------------------------------
function plainWords(e) {
  switch (e && e.kind) {
    case 'bundle_missing':
      return `The model files could not be found. Build them with "./build.sh bundle", then reload this page.` +
        (e.details && e.details.url ? `\nMissing: ${e.details.url}` : '');
    case 'bundle_corrupt':
      return `The model files are damaged or out of date. Rebuild them with "./build.sh bundle", then reload.\n${e.message}`;
    case 'network':
      return `The model download failed or stalled. Check the connection and reload this page to try again.\n${e.message}`;
    case 'site_incomplete':
      return `This site is missing some of its own files. Rebuild it with "./build.sh site", then reload.\n${e.message}`;
    case 'out_of_memory':
      return 'Your browser ran out of memory while running the model. Close other tabs, clear the chat, or reload the page.';
    case 'context_window_exceeded':
      return `This conversation no longer fits in the model's memory (context window). Clear the chat or lower "Max tokens".\n(${e.message})`;
    case 'invalid_setting':
      return `A setting is out of range: ${e.message}`;
    case 'model_not_loaded':
      return 'The model is not loaded yet. Wait for the progress bar to finish.';
    default:
      return `Something went wrong: ${(e && e.message) || e}`;
  }
}

function showError(e) {
  ui.errorText.textContent = plainWords(e);
  ui.error.hidden = false;
  ui.error.dataset.kind = (e && e.kind) || 'internal';
}

function hideError() { ui.error.hidden = true; ui.errorText.textContent = ''; }

// ---- loading ---------------------------------------------------------------------------------
// The bar shows the whole load (percent); the label names the step and, while downloading,
// the bytes: one measure each, never a percent of one thing beside the MB of another.
function progressLabel(stage, loaded, total) {
  const step = STAGE_ORDER.indexOf(stage);
  const head = `${step >= 0 ? `Step ${step + 1} of ${STAGE_ORDER.length}: ` : ''}${STAGE_LABELS[stage] || stage}`;
  if (stage === 'download' && total) return `${head} (${(loaded / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MB)`;
  return `${head}…`;
}

function setProgress({ stage, percent, loaded, total }) {
  const pct = Math.round(percent);
  ui.progress.hidden = false;
  ui.progressFill.style.width = `${pct}%`;
  ui.progress.setAttribute('aria-valuenow', String(pct));
  const label = progressLabel(stage, loaded, total);
  ui.progress.setAttribute('aria-valuetext', label);
  ui.progressLabel.textContent = label;
  ui.progress.dataset.stage = stage;
}

async function bundleUrl() {
  const params = new URLSearchParams(location.search);
  let id = params.get('bundle');
  if (id && /[/:]/.test(id)) return new URL(id, location.href).href;
  const site = await (await fetch('site.json')).json();
  return bundleIdUrl(id || site.default_bundle, location.href);   // InvalidSetting for a bad id
}

function setReadyUI(ready) {
  ui.input.disabled = !ready;
  ui.send.disabled = !ready || busy;
  ui.clear.disabled = !ready || busy;
  ui.stop.disabled = !busy;
  ui.applySystem.disabled = !ready || busy;
}

async function load() {
  const params = new URLSearchParams(location.search);
  const threads = params.get('threads') ? Number(params.get('threads')) : undefined;
  setProgress({ stage: 'download', percent: 0 });
  ui.status.textContent = 'Loading the model…';
  bot = await SmolChat.load({ bundleUrl: await bundleUrl(), threads, onProgress: setProgress });
  const info = bot.loadInfo;
  if (info.defaults) { // the engine's defaults (py_runtime/smolchat/settings.py): the one place
    ui.temperature.value = String(info.defaults.temperature);
    ui.maxTokens.value = String(info.defaults.max_tokens);
  }
  limits = info.limits || {};
  if (limits.temperature) { ui.temperature.min = limits.temperature.min; ui.temperature.max = limits.temperature.max; }
  if (limits.max_tokens) {
    ui.maxTokens.min = limits.max_tokens.min;
    ui.maxTokens.max = Math.min(limits.max_tokens.max, info.context_window || Infinity);
  }
  ui.progress.hidden = true;
  ui.status.textContent = `Ready · ${info.bundle_id || 'model'} · ${info.threads} thread${info.threads === 1 ? '' : 's'}` +
    `${info.cross_origin_isolated ? '' : ' (not cross-origin isolated)'} · loaded in ${(info.load_ms / 1000).toFixed(1)} s`;
  setReadyUI(true);
  ui.input.focus();
  return info;
}

// ---- messages --------------------------------------------------------------------------------
function addMessage(role, text, tag) {
  ui.empty.hidden = true;
  const el = document.createElement('article');
  el.className = `msg ${role}`;
  if (tag) {
    const t = document.createElement('div');
    t.className = 'tag';
    t.textContent = tag;
    el.append(t);
  }
  const body = document.createElement(role === 'assistant' ? 'div' : 'p');
  body.className = role === 'assistant' ? 'text md' : 'text';
  if (role === 'assistant') renderInto(body, text); else body.textContent = text;
  el.append(body);
  ui.messages.append(el);
  scrollToEnd();
  return el;
}

function scrollToEnd() { ui.messages.scrollTop = ui.messages.scrollHeight; }

function addMeta(el, reply, stopped) {
  el.dataset.raw = reply.text;   // what Copy copies: the reply as the model wrote it (Markdown)
  const meta = document.createElement('div');
  meta.className = 'meta';
  const facts = document.createElement('span');
  const t = reply.timings || {};
  facts.textContent = `${reply.completion_tokens} tokens · ${fmt(t.decode_tok_s)} tok/s` + (stopped ? ' · stopped' : '');
  meta.append(facts, copyButton(() => el.dataset.raw, 'ghost copy', 'Copy the reply'));
  el.append(meta);
  scrollToEnd();   // after the row exists, so a long reply does not leave it under the input
}

function fmt(x) { return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x.toFixed(1) : '–'; }

function showTimings(reply) {
  const t = reply.timings || {};
  ui.status.textContent = `TTFT ${Math.round(t.ttft_ms)} ms · ${fmt(t.decode_tok_s)} tok/s · ` +
    `${reply.prompt_tokens} prompt + ${reply.completion_tokens} new tokens · ${reply.finish_reason}`;
}

// Settings from the form, checked against the engine's ranges: -> {settings} or {error}.
// The fields start empty and show the engine's defaults once loaded; an empty field sends
// nothing, so the engine's default applies (no second copy of the defaults here).
function checkField(input, name, label, integer) {
  if (input.value.trim() === '') {
    input.setAttribute('aria-invalid', 'false');
    return { value: undefined };
  }
  const range = limits[name];
  const value = Number(input.value);
  const max = name === 'max_tokens' ? Number(input.max) || (range && range.max) : range && range.max;
  const bad = !Number.isFinite(value) || (integer && !Number.isInteger(value))
    || (range && (range.min_exclusive ? value <= range.min : value < range.min)) || (max !== undefined && value > max);
  input.setAttribute('aria-invalid', String(Boolean(bad)));
  if (!bad) return { value };
  const what = integer ? 'a whole number' : 'a number';
  const span = range ? ` from ${range.min} to ${max}` : '';
  return { error: `${label} must be ${what}${span} (it is "${input.value}").` };
}

function settings() {
  const t = checkField(ui.temperature, 'temperature', 'Temperature', false);
  const m = checkField(ui.maxTokens, 'max_tokens', 'Max tokens', true);
  const error = t.error || m.error;
  if (error) return { error };
  const s = {};
  if (t.value !== undefined) s.temperature = t.value;
  if (m.value !== undefined) s.maxTokens = m.value;
  return { settings: s };
}

// Send one message; resolves to the reply (or the partial reply when stopped).
async function send(text, overrides = {}) {
  if (!bot || busy) return null;
  text = text.trim();
  if (!text) return null;
  hideError();
  const form = settings();
  if (form.error) {   // nothing was sent: no bubble, the text stays where it was
    showError({ kind: 'invalid_setting', message: form.error });
    ui.settings.hidden = false;   // show the field that is wrong
    ui.settingsToggle.setAttribute('aria-expanded', 'true');
    return { error: { kind: 'invalid_setting', message: form.error } };
  }
  const mode = overrides.mode || ui.mode.value;
  busy = true;
  setReadyUI(true);
  const asked = addMessage('user', text, mode === 'instruct' ? 'instruct' : '');
  const out = addMessage('assistant', '');
  out.classList.add('streaming');
  const body = out.querySelector('.text');
  const view = replyView(body);
  let shown = '';
  controller = new AbortController();
  let reply = null;
  try {
    const opts = { ...form.settings, ...overrides.settings, signal: controller.signal,
      onToken: (piece) => {
        shown += piece;
        view.update(shown);
        requestAnimationFrame(scrollToEnd);
      } };
    reply = await (mode === 'instruct' ? bot.instruct(text, opts) : bot.chat(text, opts));
    view.finish(reply.text);
    addMeta(out, reply, false);
    showTimings(reply);
  } catch (e) {
    if (e.name === 'AbortError' && e.reply) {
      reply = e.reply;
      view.finish(reply.text);
      addMeta(out, reply, true);
      showTimings(reply);
    } else {
      // The engine keeps no half exchange after an error: neither does the page. The message
      // goes back into the input box (unless something new was typed meanwhile).
      view.finish('');
      out.remove();
      asked.remove();
      if (!ui.messages.querySelector('.msg')) ui.empty.hidden = false;
      if (!ui.input.value.trim()) ui.input.value = text;
      showError(e);
      reply = { error: e.toJSON ? e.toJSON() : { kind: e.kind, message: String(e.message || e) } };
    }
  } finally {
    out.classList.remove('streaming');
    busy = false;
    controller = null;
    setReadyUI(true);
  }
  return reply;
}

function stop() { if (controller) controller.abort(); }

function clearMessages() {
  for (const el of [...ui.messages.querySelectorAll('.msg')]) el.remove();
  ui.empty.hidden = false;
}

// ---- wiring ----------------------------------------------------------------------------------
ui.composer.addEventListener('submit', (event) => {
  event.preventDefault();
  const text = ui.input.value;
  if (!text.trim() || busy) return;
  if (settings().error) { send(text); return; }   // shows why; the text stays in the box
  ui.input.value = '';
  send(text);
});
ui.input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
document.addEventListener('keydown', (event) => { if (event.key === 'Escape') stop(); });
ui.stop.addEventListener('click', stop);
ui.clear.addEventListener('click', async () => {
  try { await bot.clearConversation(); clearMessages(); hideError(); } catch (e) { showError(e); }
});
ui.applySystem.addEventListener('click', async () => {
  try {
    await bot.setSystemPrompt(ui.systemPrompt.value.trim() || null);
    clearMessages();
    hideError();
    ui.status.textContent = 'System prompt set · the chat was cleared';
  } catch (e) { showError(e); }
});
ui.settingsToggle.addEventListener('click', () => {
  ui.settings.hidden = !ui.settings.hidden;
  ui.settingsToggle.setAttribute('aria-expanded', String(!ui.settings.hidden));
});
ui.errorClose.addEventListener('click', hideError);
for (const input of [ui.temperature, ui.maxTokens]) input.addEventListener('input', () => input.removeAttribute('aria-invalid'));

// ---- theme and placeholder -------------------------------------------------------------------
const THEMES = ['auto', 'dark', 'light'];
function applyTheme(theme) {
  if (theme === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  ui.theme.textContent = `Theme: ${theme}`;
  ui.theme.dataset.theme = theme;
}
function storedTheme() { try { return localStorage.getItem('smolchat-theme'); } catch { return null; } }
applyTheme(THEMES.includes(storedTheme()) ? storedTheme() : 'auto');
ui.theme.addEventListener('click', () => {
  const next = THEMES[(THEMES.indexOf(ui.theme.dataset.theme) + 1) % THEMES.length];
  applyTheme(next);
  try { localStorage.setItem('smolchat-theme', next); } catch { /* private mode: not kept */ }
});

// Keyboard hints only where there is a keyboard (not on a phone).
const touch = matchMedia('(pointer: coarse), (max-width: 560px)');
function setPlaceholder() {
  ui.input.placeholder = touch.matches ? 'Message SmolChat'
    : 'Message SmolChat (Enter sends, Shift+Enter new line, Esc stops)';
}
setPlaceholder();
touch.addEventListener('change', setPlaceholder);

const ready = load().catch((e) => {
  ui.progress.hidden = true;
  ui.status.textContent = 'The model could not be loaded';
  showError(e);
  throw e;
});
ready.catch(() => {});

window.smolchatApp = {
  ready,
  get bot() { return bot; },
  get busy() { return busy; },
  send,
  stop,
};
