#!/usr/bin/env bash
# The browser the UI tests drive (tests/test_browser.py): Debian's chromium package, installed when it is missing
# and apt-get can run (as root, or through sudo without a password). Otherwise one line on how to get one; exit 0
# either way, so a CI script can call it unconditionally (CI sets LORAFIT_REQUIRE_BROWSER=1, so the tests then
# fail rather than skip).
set -euo pipefail

if [[ -n "${LORAFIT_BROWSER:-}" && -x "${LORAFIT_BROWSER}" ]]; then
  echo "browser: ${LORAFIT_BROWSER} (LORAFIT_BROWSER)"
  exit 0
fi
for found in /usr/bin/chromium "$(command -v chromium || true)"; do
  if [[ -n "$found" && -x "$found" ]]; then
    echo "browser: $found"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no chromium and no apt-get here — install Chromium with your package manager and set LORAFIT_BROWSER=/path/to/it"
  exit 0
fi
if [[ "$(id -u)" -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "no chromium — run: sudo apt-get update && sudo apt-get install -y chromium (or set LORAFIT_BROWSER=/path/to/it)"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if "${as_root[@]}" apt-get update -qq && "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium \
    && command -v chromium >/dev/null; then
  echo "browser: $(command -v chromium)"
else
  echo "installing chromium with apt-get failed — install it by hand or set LORAFIT_BROWSER=/path/to/it"
fi
exit 0
