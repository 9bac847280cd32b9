#!/bin/sh
# Sets up a fresh clone: Debian's mosquitto (the MQTT tests start their own
# brokers with it), Debian's chromium (the HTML report's test) and a venv in .venv with fleetstage and its dev
# tools (pytest, hypothesis, ruff, mypy, the MicroPython unix port).
# Idempotent: a second run installs nothing new.
set -eu
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
        # the package's own service is not ours: tests start their own brokers
        (systemctl disable --now mosquitto 2>/dev/null || service mosquitto stop 2>/dev/null) || true
    else
        echo "bootstrap: mosquitto is missing; run: sudo apt-get install mosquitto" >&2
    fi
fi
# Debian's chromium: the simulator's HTML report is tested in a real headless browser
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "bootstrap: chromium is missing; run: sudo apt-get install chromium" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
