#!/usr/bin/env bash
# Run the peer benchmark shapes on resumable and on DBOS Transact against the
# same PostgreSQL server, then print one Markdown table comparing them.
# Progress and build output go to stderr; the summary goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."   # repo root, whatever the caller's cwd

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}"
# Our side reads the same server from the variable its tests and benches use.
export RESUMABLE_TEST_POSTGRES_URL="$DATABASE_URL"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "== setting up DBOS venv" >&2
bench/dbos/setup.sh
py=bench/dbos/.venv/bin/python

echo "== resumable: cargo bench --features postgres,conformance --bench peer_shapes -- --json" >&2
cargo bench --features postgres,conformance --bench peer_shapes -- --json > "$out/resumable.jsonl"

echo "== DBOS: bench/dbos/shapes.py --shape all" >&2
"$py" bench/dbos/shapes.py --shape all --database-url "$DATABASE_URL" > "$out/dbos.jsonl"

dbos_version="$("$py" -c 'import importlib.metadata as m; print(m.version("dbos"))')"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "DBOS Transact $dbos_version (Python $("$py" -V | cut -d' ' -f2)); $(nproc) cores ($cpu)"
echo
"$py" bench/compare_table.py "$out/resumable.jsonl" "$out/dbos.jsonl"
