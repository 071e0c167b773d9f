"""The files of prometheus_client's multiprocess mode, as gunicorn's master manages them.

This module imports neither Django nor any metric, so gunicorn.conf.py can use
it in the master process without creating metric files there.

Each worker writes its counters and histograms to `<type>_<pid>.db` in
PROMETHEUS_MULTIPROC_DIR. A worker that exits leaves its files behind (its
counts must stay in the sums), so a service whose workers are recycled every
few thousand requests would pile up files and every scrape would read them
all. When a worker exits, the master folds its files into one
`<type>_archive.db` per type and deletes them. Scrapes read under a shared
lock and the fold holds the lock alone, so no scrape sees a count twice or
misses one.
"""

from __future__ import annotations

import fcntl
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead

LOCK_NAME = ".lock"
ARCHIVE = "archive"
# Types whose values add up across processes; gauges are per process and left to mark_process_dead.
ADDITIVE_TYPES = ("counter", "histogram", "summary")


@contextmanager
def directory_lock(path: str, *, exclusive: bool) -> Iterator[None]:
    """Shared by scrapes; exclusive while a dead worker's files are folded."""
    with open(os.path.join(path, LOCK_NAME), "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_directory(path: str) -> None:
    """Start a fresh service with empty counters: create the directory and delete old files."""
    os.makedirs(path, exist_ok=True)
    with directory_lock(path, exclusive=True):
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)


def fold_dead_worker(path: str, pid: int) -> int:
    """Add a dead worker's counts to the archive files and delete its files; return how many values moved."""
    moved = 0
    with directory_lock(path, exclusive=True):
        for typ in ADDITIVE_TYPES:
            dead = os.path.join(path, f"{typ}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(path, f"{typ}_{ARCHIVE}.db"))
            try:
                for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(dead):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
                    moved += 1
            finally:
                archive.close()
            os.remove(dead)
    mark_process_dead(pid, path)
    return moved
