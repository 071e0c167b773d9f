#!/usr/bin/env bash
# Runs the whole test suite twice: on SQLite, then on a temporary PostgreSQL
# server that it starts itself (initdb in a temporary directory, loopback only).
# Arguments go to pytest, e.g. ./test.sh -k track -x
# With CI=true a component the tests need (PostgreSQL among them) must be
# present: its absence fails the run instead of skipping.
set -uo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv || exit 1
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt || exit 1

status=0
echo "=== Import contracts (import-linter, pyproject.toml)"
.venv/bin/lint-imports --no-cache --no-logo || { echo "import contracts broken: see above"; status=1; }

echo "=== Test suite on SQLite"
.venv/bin/python -m pytest "$@" || status=1

echo "=== Test suite on PostgreSQL"
if .venv/bin/python -c "import sys; from tests.pgserver import find_bindir; sys.exit(0 if find_bindir() else 1)"; then
    .venv/bin/python -m tests.pgserver -- .venv/bin/python -m pytest "$@" || status=1
else
    echo "PostgreSQL server binaries not found (install the postgresql package): the PostgreSQL run did NOT happen."
    case "${CI:-}" in true|1|yes) status=1 ;; esac
fi

if [ "$status" -ne 0 ]; then
    echo "=== FAILED"
else
    echo "=== All test runs passed"
fi
exit "$status"
