#!/usr/bin/env bash
# Make sure a headless Chromium is available for the HTML-report test (tests/test_compare.py).
# Installs Debian's `chromium` package when it is missing and we are root with apt-get;
# otherwise says what to do and exits 0 (the test then skips with a clear message).
set -u

for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
        exit 0
    fi
done

if [ "$(id -u)" != "0" ]; then
    echo "ensure-chromium: chromium not found; install it (e.g. 'sudo apt-get install -y chromium')" \
         "to run the HTML report test, which is skipped otherwise." >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: chromium not found and apt-get is unavailable; install a Chromium" \
         "or Chrome build to run the HTML report test, which is skipped otherwise." >&2
    exit 0
fi

echo "ensure-chromium: installing chromium with apt-get (once) ..." >&2
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
    echo "ensure-chromium: chromium installed." >&2
else
    echo "ensure-chromium: could not install chromium; the HTML report test will be skipped." >&2
fi
exit 0
