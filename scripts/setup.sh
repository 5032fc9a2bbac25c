#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs icefloe with its pinned dependencies.
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
