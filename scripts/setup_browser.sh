#!/usr/bin/env bash
# Installs Debian's Chromium and its driver for the viewer's browser test, when they are missing and this
# user can (root, with apt-get). Otherwise it says why in one line and the browser test skips. Called by
# run_tests.sh; does nothing when both are installed.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
    echo "setup_browser: chromium and chromedriver are missing (apt-get install chromium chromium-driver, as root); the browser test will skip" >&2
fi
