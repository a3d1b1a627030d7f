// Rendered replies for the page (app.js) and the widget (widget.js): the model's text goes
// through marked (GitHub-flavoured Markdown) into DOMPurify (an allow-list) into the DOM;
// nothing the model writes becomes live HTML or script.
//
//   const view = replyView(element);   // element: an empty container (any document or shadow root)
//   view.update(textSoFar);            // while streaming: re-rendered at most once a frame
//   view.finish(fullText);             // at the end: rendered at once
//
// What is rendered: paragraphs, emphasis, lists, tables, block quotes, headings, inline code,
// code blocks (monospace, each with a Copy button) and links. Links keep http(s) targets only
// and open in a new tab with rel="noopener noreferrer"; any other scheme (javascript:, data:,
// relative URLs) leaves the link text without a link. Raw HTML in the model's text is shown as
// text (marked's html tokens are escaped), images become links (nothing loads from elsewhere),
// and the sanitizer removes anything outside the allow-list as a second line of defence.
//
// Incremental: while a reply streams the whole text so far is parsed again (a reply is a few
// KB: well under a millisecond per frame); an unclosed ``` fence renders as a code block
// until it closes.
//
// What this module ignores: where the text comes from and the chrome around a reply.

import { Marked } from './vendor/marked/marked.esm.js';
import DOMPurify from './vendor/dompurify/purify.es.mjs';

const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESCAPES[c]);

const marked = new Marked({
  gfm: true,
  breaks: true,   // a model's single newline is a line break (poems, addresses, steps)
  renderer: {
    html({ text }) { return escapeHtml(text); },                     // raw HTML stays text
    image({ href, text }) { return `<a href="${escapeHtml(href)}">${escapeHtml(text || href)}</a>`; },
  },
});

const ALLOWED_TAGS = ['p', 'br', 'strong', 'em', 'del', 'code', 'pre', 'ul', 'ol', 'li', 'blockquote',
  'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'a'];
const ALLOWED_ATTR = ['href', 'title', 'align', 'start', 'class'];

// A private DOMPurify instance: its hook cannot touch a host page's own DOMPurify.
const purify = DOMPurify(globalThis.window);
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.nodeName === 'A') {
    if (node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  }
  // marked writes class="language-x" on code; nothing else may carry a class
  if (node.hasAttribute && node.hasAttribute('class')
      && !(node.nodeName === 'CODE' && /^language-[\w+#.-]{1,40}$/.test(node.getAttribute('class')))) {
    node.removeAttribute('class');
  }
});

const PURIFY_OPTIONS = {
  // The URI pattern is checked on every attribute DOMPurify does not know as URI-safe: align
  // (table cells) and start (ordered lists) are declared safe so that they survive it.
  ALLOWED_TAGS, ALLOWED_ATTR, ALLOWED_URI_REGEXP: /^https?:\/\//i, ADD_URI_SAFE_ATTR: ['align', 'start'],
  ALLOW_DATA_ATTR: false, ALLOW_ARIA_ATTR: false, RETURN_DOM_FRAGMENT: true,
};

// Markdown text -> a sanitized DocumentFragment (no code-block chrome yet).
export function renderMarkdown(text) {
  const html = marked.parse(String(text ?? ''), { async: false });
  return purify.sanitize(html, PURIFY_OPTIONS);
}

export async function copyText(text, near) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // No permission (an embedding page may not grant it): the old way, inside our own root.
    const root = near && near.getRootNode ? near.getRootNode() : document;
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    (root === document ? document.body : root).append(ta);
    ta.select();
    try { document.execCommand('copy'); } finally { ta.remove(); }
  }
}

// A "Copy" button (class `className`, aria-label `label`) that copies text() when clicked and
// says "Copied" for 1.5 s.
export function copyButton(text, className, label) {
  const button = document.createElement('button');
  button.type = 'button';
  button.className = className;
  button.textContent = 'Copy';
  button.setAttribute('aria-label', label);
  button.addEventListener('click', async () => {
    await copyText(text(), button);
    button.textContent = 'Copied';
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
  return button;
}

// Wrap each <pre> in <div class="code-block"> with a Copy button that copies its code.
function addCodeChrome(fragment) {
  for (const pre of fragment.querySelectorAll('pre')) {
    const box = document.createElement('div');
    box.className = 'code-block';
    const button = copyButton(() => pre.textContent, 'code-copy', 'Copy the code');
    pre.replaceWith(box);
    box.append(button, pre);
  }
  return fragment;
}

// Render `text` into `element` (replacing what it held).
export function renderInto(element, text) {
  element.replaceChildren(addCodeChrome(renderMarkdown(text)));
  element.dataset.markdown = 'rendered';
}

// A reply being streamed into `element`: update() coalesces to one render per animation frame.
export function replyView(element) {
  let pending = null;
  let frame = 0;
  const flush = () => {
    frame = 0;
    if (pending !== null) { renderInto(element, pending); pending = null; }
  };
  return {
    update(text) {
      pending = text;
      if (!frame) frame = requestAnimationFrame(flush);
    },
    finish(text) {
      if (frame) cancelAnimationFrame(frame);
      frame = 0;
      pending = null;
      renderInto(element, text);
    },
  };
}

// The CSS a rendered reply needs, for the document or a shadow root (a constructed sheet: no
// inline <style>). Colours come from the host's custom properties: --line, --muted, --accent,
// --code-bg, and --panel/--text (page) or --bg/--fg (widget) for the Copy button.
export const MARKDOWN_CSS = `
.md > :first-child { margin-top: 0; }
.md > :last-child { margin-bottom: 0; }
.md p, .md ul, .md ol, .md blockquote, .md table, .md .code-block { margin: 0 0 8px; }
.md ul, .md ol { padding-left: 22px; }
.md h1, .md h2, .md h3, .md h4, .md h5, .md h6 { font-size: 1.05em; margin: 10px 0 6px; }
.md blockquote { border-left: 3px solid var(--line); padding-left: 10px; color: var(--muted); }
.md code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.92em; }
.md :not(pre) > code { background: var(--code-bg); padding: 1px 4px; border-radius: 4px; }
.md .code-block { position: relative; }
.md pre { margin: 0; padding: 10px 12px; padding-top: 28px; overflow-x: auto; background: var(--code-bg); border-radius: 8px; white-space: pre; }
.md .code-copy { position: absolute; top: 4px; right: 4px; font-size: 12px; padding: 2px 8px; border-radius: 6px; border: 1px solid var(--line); background: var(--panel, var(--bg)); color: var(--text, var(--fg)); cursor: pointer; }
.md table { border-collapse: collapse; display: block; overflow-x: auto; }
.md th, .md td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; }
.md a { color: var(--accent); }
.md hr { border: 0; border-top: 1px solid var(--line); }
`;

export function adoptMarkdownCss(root) {
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(MARKDOWN_CSS);
  root.adoptedStyleSheets = [...root.adoptedStyleSheets, sheet];
}
