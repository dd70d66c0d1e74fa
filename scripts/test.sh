#!/usr/bin/env bash
# Install everything the test suite needs (venv at .venv/, Java 17 for TorchServe, Debian's
# Chromium for the browser test) and run it: ruff, then pytest. Extra arguments go to pytest.
# Under CI=true a server or browser test that would be skipped fails instead (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"

# Debian packages the server and browser tests need, installed when missing (as root).
missing=()
command -v java >/dev/null 2>&1 || [ -n "${JAVA_HOME:-}" ] || missing+=(openjdk-17-jre-headless)
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: missing ${missing[*]} and not root: server/browser tests will be skipped" \
      "(and fail under CI=true)" >&2
  fi
fi
.venv/bin/ruff check .
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
