#!/usr/bin/env bash
# What tests/test_html_browser.py needs, installed where it is missing:
# - Chromium from the system's packages (Debian/Ubuntu: apt-get install chromium);
# - the playwright Python package in the venv, which drives that Chromium through the Chrome
#   DevTools Protocol. Its own browser download (`playwright install`) is never used.
# Run it before `make test` in CI, then set GRADCLI_BROWSER_REQUIRED=1 so that a browser
# still missing fails the browser test instead of skipping it.
#   usage: scripts/install_browser.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}

find_chromium() {
    command -v chromium || command -v chromium-browser || command -v google-chrome || true
}

if [ -z "$(find_chromium)" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_browser: no Chromium and no apt-get here; install Chromium yourself" >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    # the package lists may be stale or absent on a fresh machine: update only if needed
    $SUDO apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
fi

if ! "$PY" -c "import playwright" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "playwright>=1.45"
fi

echo "install_browser: $("$(find_chromium)" --version 2>/dev/null) with playwright" \
    "$("$PY" -c 'from importlib.metadata import version; print(version("playwright"))')"
