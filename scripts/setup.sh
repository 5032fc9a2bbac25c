#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs icefloe with its pinned dependencies;
# with --tests also what the test suite needs beyond Python packages (a browser).
# Safe to re-run: an up-to-date environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for candidate in python3.12 "$(command -v pyenv >/dev/null 2>&1 && pyenv root)/versions/3.12"*/bin/python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    echo "icefloe needs Python 3.12 (icechunk 2.x requires >= 3.12); none was found." >&2
    return 1
}

stamp=.venv/.icefloe-installed
if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test]'
    touch "$stamp"
fi

# --tests: the UI test (tests/deployments/test_ui.py) drives a real browser, Debian's
# chromium. It is installed when missing and this user may install system packages (root
# with apt); otherwise the test itself says what to install.
if [ "${1:-}" = "--tests" ] && ! command -v chromium >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the UI test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "could not install chromium: the UI test will fail until it is installed" >&2
fi
