#!/usr/bin/env bash
# The browser tests/test_html_browser.py opens the HTML report in: Chromium from the system's
# packages (Debian/Ubuntu: apt-get install chromium), installed when it is missing. The
# playwright Python package that drives it comes with the dev extras (`make install`); its own
# browser download (`playwright install`) is never used. .ci/run runs this beside `make install`
# and then the tests with GRADCLI_BROWSER_REQUIRED=1, so a browser still missing fails the
# browser test instead of skipping it.
set -euo pipefail

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
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq \
             && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
fi

echo "install_browser: $("$(find_chromium)" --version 2>/dev/null)"
