#!/usr/bin/env bash
# Takes a fresh clone to a running service: virtual environment, install,
# migrate, then gunicorn on $HOST:$PORT (127.0.0.1:5000 in development).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${MLOPS_VENV:-.venv}"   # where the virtual environment lives
if [ ! -x "$VENV/bin/python" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "start.sh: $PYTHON not found; install Python 3.11 or newer" >&2
        exit 1
    fi
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "start.sh: $("$PYTHON" --version 2>&1) is too old; the service needs Python 3.11 or newer (set PYTHON=python3.11)" >&2
        exit 1
    fi
    echo "Creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
# With MLflow configured, the service's requirements plus the MLflow client (requirements-mlflow.txt).
requirements=requirements.txt
[ -n "${MLFLOW_TRACKING_URI:-}" ] && requirements=requirements-mlflow.txt
echo "Installing $requirements"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"

echo "Migrating the database"
"$VENV/bin/python" manage.py migrate --noinput
# Only when a migration changed what the analytics rollups hold (it says so); otherwise this does nothing.
"$VENV/bin/python" manage.py rebuild_analytics --if-needed --quiet-progress
"$VENV/bin/python" manage.py collectstatic --noinput --verbosity 0

# Processes started here stop with the service. Each runs in its own process
# group (job control), so Ctrl-C or a signal to this script reaches only the
# script, which then stops each of them in order and waits for it.
set -m
children=()
cleanup() {
    # Ask each process to stop (its main process only: the pipeline worker
    # stops its own children in order), give them 15 s, then end what is left
    # of each process group. Return only once they are gone, so a stopped
    # start.sh means a stopped service.
    for pid in "${children[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        alive=""
        for pid in "${children[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.5
    done
    for pid in "${children[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The document pipeline's worker: runs what staff start from the admin, one run
# at a time, taking them from a queue in the database (django-q2).
echo "Starting the pipeline worker"
"$VENV/bin/python" manage.py qcluster &
children+=($!)

# The scheduled jobs (MLflow's daily figures and the other schedules) in a worker cluster of their own, so a
# long pipeline run never holds them up; across instances each due job runs once.
echo "Starting the scheduled jobs' worker"
Q_CLUSTER_NAME=scheduled "$VENV/bin/python" manage.py qcluster &
children+=($!)

# The folder: folds stored events into conversations, rollups and the Prometheus totals (ingest only
# inserts). Its own process, so it never waits behind a pipeline run; one folds per database at a time.
echo "Starting the folder"
"$VENV/bin/python" manage.py fold_events &
children+=($!)

echo "Serving with gunicorn (WEB_CONCURRENCY=${WEB_CONCURRENCY:-default}); admin at /admin/ (create a user with: .venv/bin/python manage.py createsuperuser)"
"$VENV/bin/gunicorn" mlops_site.wsgi --config gunicorn.conf.py &
children+=($!)
# If any of them ends, stop the others and exit.
wait -n "${children[@]}"
