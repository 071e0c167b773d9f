#!/usr/bin/env bash
# Runs the linters (ruff, mypy) and the import contracts (import-linter),
# then the whole test suite twice, side by side: on SQLite, and on a
# temporary PostgreSQL server that it starts itself (initdb in a
# temporary directory, loopback only), reached through PgBouncer in
# transaction pooling mode (tests/pgserver.py); that pass leaves out the tests
# that touch no database (--database-tests-only). Any failing step fails the run; the
# last line names the failed steps.
# Arguments go to pytest, e.g. ./test.sh -k track -x
# With CI=true a component the tests need (PostgreSQL among them) must be
# present: its absence fails the run instead of skipping.
set -uo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"

# The MLflow tracking server that the MLflow tests start: full mlflow in an environment of its own (it pins
# gunicorn<27, the service 27). Made once, and again only when requirements-mlflow-server.txt changes
# (about 50 s and 850 MB), while .venv installs and the linters run. MLFLOW_SERVER names another server binary
# instead.
mlflow_pid=""
mlflow_log="$(mktemp)"
if [ -z "${MLFLOW_SERVER:-}" ]; then
    wanted="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' requirements-mlflow-server.txt)"
    if [ "$(cat .venv-mlflow/.requirements.sha256 2>/dev/null)" != "$wanted" ]; then
        echo "=== Installing the MLflow tracking server into .venv-mlflow (requirements-mlflow-server.txt), in the background"
        (
            if "$PYTHON" -m venv .venv-mlflow \
                && .venv-mlflow/bin/pip install --quiet --disable-pip-version-check -r requirements-mlflow-server.txt; then
                echo "$wanted" > .venv-mlflow/.requirements.sha256
            else
                echo "The MLflow server could not be installed: the MLflow tests skip (and fail with CI=true)."
            fi
        ) >"$mlflow_log" 2>&1 &
        mlflow_pid=$!
    fi
fi
wait_for_mlflow() {
    if [ -n "$mlflow_pid" ]; then
        wait "$mlflow_pid"
        echo "=== The MLflow tracking server's installation"
        cat "$mlflow_log"
        mlflow_pid=""
    fi
    rm -f "$mlflow_log"
}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv || { wait_for_mlflow; exit 1; }
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt || { wait_for_mlflow; exit 1; }

status=0
failed=()
echo "=== Lint: ruff check"
.venv/bin/ruff check metrics_app documents_app mlops_site tests gunicorn.conf.py manage.py || { status=1; failed+=("ruff check"); }

echo "=== Types: mypy"
.venv/bin/mypy || { status=1; failed+=("mypy"); }

echo "=== Import contracts (import-linter, pyproject.toml)"
.venv/bin/lint-imports --no-cache --no-logo || { status=1; failed+=("import contracts"); }

wait_for_mlflow

# The two passes run at the same time, each into a log of its own that is shown once it ends: much of a pass
# waits on the servers its tests start (gunicorn, PostgreSQL, Prometheus, Chromium, MLflow), so on two cores
# both together take little more than the longer one. Ctrl-C stops both (the PostgreSQL pass removes its server).
logs="$(mktemp -d)"
pids=()
stop_passes() { kill -INT "${pids[@]}" 2>/dev/null; wait; exit 130; }
trap stop_passes INT TERM
echo "=== Test suites on SQLite and on PostgreSQL (through PgBouncer), side by side; each one's output follows when it ends"
( exec .venv/bin/python -m pytest "$@" >"$logs/sqlite.log" 2>&1 ) &
sqlite_pid=$!
pids+=("$sqlite_pid")

in_ci=false
case "${CI:-}" in true|1|yes) in_ci=true ;; esac
pg_pid=""
pg_note=""
if ! .venv/bin/python -c "import sys; from tests.pgserver import find_bindir; sys.exit(0 if find_bindir() else 1)"; then
    pg_note="PostgreSQL server binaries not found (install the postgresql package): the PostgreSQL run did NOT happen."
    if $in_ci; then status=1; failed+=("PostgreSQL run (server binaries missing)"); fi
elif $in_ci && ! .venv/bin/python -c "import sys; from tests.pgserver import find_pgbouncer; sys.exit(0 if find_pgbouncer() else 1)"; then
    pg_note="pgbouncer not found (install the pgbouncer package): the PostgreSQL run did NOT happen (CI=true runs it only through PgBouncer)."
    status=1; failed+=("PostgreSQL run (pgbouncer missing)")
else
    # Without pgbouncer, tests.pgserver says so and the run talks to the server directly.
    # The tests that touch no database answer the same on both; the SQLite pass runs them (tests/conftest.py).
    ( exec .venv/bin/python -m tests.pgserver -- .venv/bin/python -m pytest --database-tests-only "$@" \
        >"$logs/postgresql.log" 2>&1 ) &
    pg_pid=$!
    pids+=("$pg_pid")
fi

wait "$sqlite_pid"
sqlite_status=$?
echo "=== Test suite on SQLite"
cat "$logs/sqlite.log"
[ "$sqlite_status" -eq 0 ] || { status=1; failed+=("tests on SQLite"); }

echo "=== Test suite on PostgreSQL (through PgBouncer)"
if [ -n "$pg_pid" ]; then
    wait "$pg_pid"
    pg_status=$?
    cat "$logs/postgresql.log"
    [ "$pg_status" -eq 0 ] || { status=1; failed+=("tests on PostgreSQL"); }
else
    echo "$pg_note"
fi
trap - INT TERM
rm -rf "$logs"

if [ "$status" -ne 0 ]; then
    echo "=== FAILED:"
    printf '    %s\n' "${failed[@]}"
else
    echo "=== All test runs passed"
fi
exit "$status"
