#!/usr/bin/env bash
# Create bench/dbos/.venv (if missing) and install the pinned DBOS Transact from requirements.txt.
# Idempotent: if the venv already satisfies requirements.txt, nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi

# Fast path: every pinned requirement already installed at the pinned version.
want="$(grep -v '^\s*#' requirements.txt | grep -v '^\s*$' | sort)"
have="$(.venv/bin/python -m pip freeze 2>/dev/null | sort)"
if [ -n "$want" ] && [ "$(comm -23 <(echo "$want") <(echo "$have"))" = "" ]; then
    exit 0
fi

.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt >&2
