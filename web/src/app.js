// The chat page (index.html) on top of the JS API (smolchat.js). Model output is only ever
// inserted with textContent, never as HTML.
//
// URL parameters: ?bundle=<bundle id | URL> (default: site.json default_bundle),
// ?threads=<n>. window.smolchatApp exposes {ready, bot, send, stop} for headless drivers.
//
// What this module ignores: the worker, Python and ONNX Runtime (all behind SmolChat).

import { SmolChat } from './smolchat.js';

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), progress: $('progress'), progressFill: $('progress-fill'),
  progressLabel: $('progress-label'), settings: $('settings'), settingsToggle: $('settings-toggle'),
  systemPrompt: $('system-prompt'), applySystem: $('apply-system'), mode: $('mode'),
  temperature: $('temperature'), maxTokens: $('max-tokens'), error: $('error'),
  errorText: $('error-text'), errorClose: $('error-close'), messages: $('messages'),
  empty: $('empty'), composer: $('composer'), input: $('input'), send: $('send'),
  stop: $('stop'), clear: $('clear'),
};

const STAGE_LABELS = {
  download: 'Downloading the model', python: 'Starting Python', compile: 'Compiling the model',
  warmup: 'Warming up',
};

let bot = null;
let busy = false;
let controller = null;

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
function setProgress({ stage, percent, loaded, total }) {
  const pct = Math.round(percent);
  ui.progress.hidden = false;
  ui.progressFill.style.width = `${pct}%`;
  ui.progress.setAttribute('aria-valuenow', String(pct));
  let label = `${STAGE_LABELS[stage] || stage}… ${pct}%`;
  if (stage === 'download' && total) label = `${STAGE_LABELS.download}: ${(loaded / 1048576).toFixed(1)} / ${(total / 1048576).toFixed(1)} MB · ${pct}%`;
  ui.progressLabel.textContent = label;
  ui.progress.dataset.stage = stage;
}

async function bundleUrl() {
  const params = new URLSearchParams(location.search);
  let id = params.get('bundle');
  if (id && /[/:]/.test(id)) return new URL(id, location.href).href;
  const site = await (await fetch('site.json')).json();
  if (!id) id = site.default_bundle;
  else if (id === 'compact' || id === 'exact') id = `smollm2-135m-instruct-${id}`;
  return new URL(`models/${id}/`, location.href).href;
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
  const body = document.createElement('p');
  body.className = 'text';
  body.textContent = text;
  el.append(body);
  ui.messages.append(el);
  el.scrollIntoView({ block: 'end' });
  return el;
}

function addMeta(el, reply, stopped) {
  const meta = document.createElement('div');
  meta.className = 'meta';
  const facts = document.createElement('span');
  const t = reply.timings || {};
  facts.textContent = `${reply.completion_tokens} tokens · ${fmt(t.decode_tok_s)} tok/s` + (stopped ? ' · stopped' : '');
  const copy = document.createElement('button');
  copy.type = 'button';
  copy.className = 'ghost copy';
  copy.textContent = 'Copy';
  copy.addEventListener('click', async () => {
    const text = el.querySelector('.text').textContent;
    try { await navigator.clipboard.writeText(text); } catch {
      const ta = document.createElement('textarea');
      ta.value = text; document.body.append(ta); ta.select(); document.execCommand('copy'); ta.remove();
    }
    copy.textContent = 'Copied';
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  meta.append(facts, copy);
  el.append(meta);
}

function fmt(x) { return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x.toFixed(1) : '–'; }

function showTimings(reply) {
  const t = reply.timings || {};
  ui.status.textContent = `TTFT ${Math.round(t.ttft_ms)} ms · ${fmt(t.decode_tok_s)} tok/s · ` +
    `${reply.prompt_tokens} prompt + ${reply.completion_tokens} new tokens · ${reply.finish_reason}`;
}

// The fields start empty and show the engine's defaults once loaded; an empty field sends
// nothing, so the engine's default applies (no second copy of the defaults here).
function settings() {
  const s = {};
  if (ui.temperature.value !== '') s.temperature = Number(ui.temperature.value);
  if (ui.maxTokens.value !== '') s.maxTokens = Math.round(Number(ui.maxTokens.value));
  return s;
}

// Send one message; resolves to the reply (or the partial reply when stopped).
async function send(text, overrides = {}) {
  if (!bot || busy) return null;
  text = text.trim();
  if (!text) return null;
  hideError();
  const mode = overrides.mode || ui.mode.value;
  busy = true;
  setReadyUI(true);
  addMessage('user', text, mode === 'instruct' ? 'instruct' : '');
  const out = addMessage('assistant', '');
  out.classList.add('streaming');
  const body = out.querySelector('.text');
  controller = new AbortController();
  let reply = null;
  try {
    const opts = { ...settings(), ...overrides.settings, signal: controller.signal,
      onToken: (piece) => { body.textContent += piece; out.scrollIntoView({ block: 'end' }); } };
    reply = await (mode === 'instruct' ? bot.instruct(text, opts) : bot.chat(text, opts));
    body.textContent = reply.text;
    addMeta(out, reply, false);
    showTimings(reply);
  } catch (e) {
    if (e.name === 'AbortError' && e.reply) {
      reply = e.reply;
      addMeta(out, reply, true);
      showTimings(reply);
    } else {
      if (!body.textContent) out.remove();
      showError(e);
      reply = { error: e.toJSON ? e.toJSON() : { message: String(e) } };
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
