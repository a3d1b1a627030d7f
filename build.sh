#!/usr/bin/env bash
# SmolChat developer entry point: bootstraps what a fresh machine lacks (venv + pinned pip
# packages, npm packages, Debian Chromium for browser work), then hands over to the project's
# own CLIs. Each bootstrap step is skipped when its stamp says it is up to date.
#
#   ./build.sh serve [--port 8000]     build what is missing, serve the chat page
#   ./build.sh test                    full build + every test (what .ci/run calls)
#   ./build.sh bundle [--preset compact|exact] [--source PATH] [--adapter DIR] [--name ID]
#   ./build.sh demo-adapter DIR      a small random LoRA adapter, to try the adapter workflow
#   ./build.sh score TEXTFILE [--bundle DIR]
#   ./build.sh chat | ask "msg" [--runtime python|browser] [--json] ...
#   ./build.sh eval CASES.jsonl [--bundle B] [--compare B2] [--runtime python|browser] [--out R.json]
#   ./build.sh bench [--quick]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMPS="$ROOT/.cache/stamps"
export PYTHONPATH="$ROOT/build:$ROOT/py_runtime:$ROOT/web:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

log() { printf '\033[1m[build.sh]\033[0m %s\n' "$*" >&2; }

# Stamp helpers: a step reruns when the hash of its inputs changes.
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; printf '%s' "$2" > "$STAMPS/$1"; }

setup_python() {
  local want; want="$(sha256sum requirements.txt | cut -c1-16)"
  if [ -x "$PY" ] && stamp_ok python "$want"; then return; fi
  local base="${SMOLCHAT_PYTHON:-}"
  if [ -z "$base" ]; then
    for cand in python3.11 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
        base="$cand"; break
      fi
    done
  fi
  [ -n "$base" ] || { echo "error: Python 3.11 is required (torch 2.13.0 CPU wheel is cp311); set SMOLCHAT_PYTHON" >&2; exit 1; }
  log "python: creating $VENV with $($base --version) and installing requirements.txt"
  [ -x "$PY" ] || "$base" -m venv "$VENV"
  "$PY" -m pip install --quiet --upgrade pip==25.3 >/dev/null 2>&1 || true
  "$PY" -m pip install --quiet -r requirements.txt
  stamp_set python "$want"
}

setup_node() {
  [ -f web/package.json ] || return 0
  local want; want="$(cat web/package.json web/package-lock.json 2>/dev/null | sha256sum | cut -c1-16)"
  if [ -d web/node_modules ] && stamp_ok node "$want"; then return; fi
  command -v npm >/dev/null || { echo "error: npm not found: install Node.js 20+ (apt-get install nodejs npm)" >&2; exit 1; }
  log "node: npm ci in web/ (pinned by package-lock.json; --ignore-scripts: no postinstall downloads)"
  (cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  stamp_set node "$want"
}

setup_chromium() {
  if [ -x /usr/bin/chromium ]; then return; fi
  command -v apt-get >/dev/null || { echo "error: /usr/bin/chromium missing and no apt-get: install Debian's chromium package" >&2; exit 1; }
  log "chromium: apt-get install chromium (Debian; Playwright's own browser download does not work here)"
  local SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
}

# The default (compact) bundle: a 4 s no-op when it is up to date.
ensure_bundle() { "$PY" -m smolchat_build bundle --preset compact; }

has_flag() { local f="$1"; shift; for a in "$@"; do [ "$a" = "$f" ] && return 0; done; return 1; }
runtime_of() { local prev=""; for a in "$@"; do
  case "$a" in --runtime=*) echo "${a#--runtime=}"; return;; esac
  [ "$prev" = "--runtime" ] && { echo "$a"; return; }; prev="$a"; done; echo python; }

cmd="${1:-help}"; [ $# -gt 0 ] && shift
case "$cmd" in
  setup)   setup_python; setup_node; setup_chromium ;;
  bundle)  setup_python; exec "$PY" -m smolchat_build bundle "$@" ;;
  demo-adapter) setup_python; exec "$PY" -m smolchat_build demo-adapter "$@" ;;
  score)   setup_python; exec "$PY" -m smolchat_build score "$@" ;;
  goldens) setup_python; exec "$PY" -m smolchat_build goldens "$@" ;;
  chat)    setup_python; ensure_bundle; exec "$PY" -m smolchat chat "$@" ;;
  ask)
    setup_python; ensure_bundle
    if [ "$(runtime_of "$@")" = browser ]; then setup_node; setup_chromium; exec "$PY" -m smolchat_web ask "$@"; fi
    exec "$PY" -m smolchat ask "$@" ;;
  serve)   setup_python; setup_node; ensure_bundle; exec "$PY" -m smolchat_web serve "$@" ;;
  site)    setup_python; setup_node; exec "$PY" -m smolchat_web site "$@" ;;
  eval)    # the browser runtime needs npm packages and Chromium; the default (python) does not
    setup_python; ensure_bundle
    if [ "$(runtime_of "$@")" = browser ]; then setup_node; setup_chromium; fi
    exec "$PY" -m smolchat_web eval "$@" ;;
  bench)   # the SmolChat row needs the compact bundle and the built site, like serve does
    setup_python; setup_node; setup_chromium; ensure_bundle; "$PY" -m smolchat_web site
    exec "$PY" -m smolchat_bench "$@" ;;
  test)
    setup_python; setup_node; setup_chromium
    # The real build runs first: the tests check what ships (size gate, parity, goldens).
    "$PY" -m smolchat_build bundle --preset compact
    "$PY" -m smolchat_build bundle --preset exact
    "$PY" -m smolchat_build bundle --source tiny-random --out models/tiny-random
    "$PY" -m smolchat_web site
    # With arguments: one pytest run as asked. Without: one process per test area, because a
    # browser area's sync Playwright keeps an event loop running for the rest of its process
    # (asyncio.run() in the next area's tests would fail). Results are summed at the end.
    [ $# -gt 0 ] && exec "$PY" -m pytest "$@"
    rm -rf .cache/junit; mkdir -p .cache/junit; status=0
    for area in build engine web embed bench; do
      [ -d "tests/$area" ] || continue
      log "pytest tests/$area"
      "$PY" -m pytest "tests/$area" --junitxml=".cache/junit/$area.xml" || status=1
    done
    "$PY" - <<'PYEOF'
import glob, xml.etree.ElementTree as ET
t = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for f in glob.glob(".cache/junit/*.xml"):
    for s in ET.parse(f).getroot().iter("testsuite"):
        for k in t:
            t[k] += int(s.get(k, 0))
passed = t["tests"] - t["failures"] - t["errors"] - t["skipped"]
print(f"all areas: {passed} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped")
PYEOF
    exit $status ;;
  # usage: the comment block at the top of this file, and nothing after it
  help|-h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" ;;
  *) echo "error: unknown command '$cmd' (try ./build.sh help)" >&2; exit 2 ;;
esac
