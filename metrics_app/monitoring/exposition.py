"""A fast reader of prometheus_client's multiprocess files that writes the text exposition directly.

prometheus_client's MultiProcessCollector parses every key of every worker's
file as JSON, builds a sample object per value and merges them on each scrape.
With 200 businesses, 10 intents and 5 models (about 7,000 series in each of
four worker files) that took about 500 ms a scrape on the 2-core machine the
service is measured on. The files are append-only: a key, once written, keeps
its place for the life of the file, and only its 8-byte value changes. So each
process remembers, per file, where every value sits and which output series it
adds to; a scrape then reads the files, adds the values found at known places,
and writes lines whose text before the value was formatted once.

Counters and histograms (and summaries, which have no quantiles in this mode)
are read here. Gauges, which have per-process modes, are left to
prometheus_client and appended; the service defines none.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from metrics_app.monitoring.files import directory_lock

_INT = struct.Struct("i")  # native, as prometheus_client writes it
ADDITIVE_TYPES = frozenset({"counter", "histogram", "summary"})


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def escape_help(text: str) -> str:
    """HELP text escaped as the text format wants it (also used by prometheus.py for the folded series)."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    """`{name="value",...}` with the values escaped; empty without labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels) + "}"


@dataclass
class _Histogram:
    """One histogram series (a label set without `le`): its bucket slots by bound, and its sum slot."""

    labels: tuple[tuple[str, str], ...]
    buckets: dict[float, int] = field(default_factory=dict)
    sum_slot: int | None = None


class _Line(NamedTuple):
    """One sample line of a counter or summary."""

    prefix: str  # the text before the value
    slot: int


class _SeriesPlan(NamedTuple):
    """How one histogram series is written: running totals over its buckets, then count and sum."""

    bucket_prefixes: list[str]  # by bound, ascending
    bucket_slots: list[int]  # the same order
    count_prefix: str
    sum_prefix: str
    sum_slot: int | None


class _FamilyPlan(NamedTuple):
    header: str  # HELP and TYPE lines
    lines: list[_Line]  # counters and summaries
    histograms: list[_SeriesPlan]


@dataclass
class _Family:
    name: str  # the name on HELP and TYPE lines (counters end in _total)
    typ: str
    help: str
    lines: list[_Line] = field(default_factory=list)
    histograms: dict[tuple[tuple[str, str], ...], _Histogram] = field(default_factory=dict)


@dataclass
class _FileIndex:
    inode: int
    parsed_to: int = 8  # bytes of the file whose entries are known
    value_index: list[int] = field(default_factory=list)  # position of each value, in doubles
    slots: list[int] = field(default_factory=list)  # the output slot each value adds to
    arrays: tuple[np.ndarray, np.ndarray] | None = None  # the two lists as arrays, once per change

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self.arrays is None or len(self.arrays[0]) != len(self.value_index):
            self.arrays = (np.array(self.value_index, dtype=np.intp), np.array(self.slots, dtype=np.intp))
        return self.arrays


class FastMultiProcessExposition:
    """Renders the merged text of all workers' counter and histogram files; remembers the files' layout."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._files: dict[str, _FileIndex] = {}
        self._slot_of: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}
        self._key_slot: dict[str, int] = {}
        self._families: dict[str, _Family] = {}
        self._plan: list[_FamilyPlan] | None = None
        # Most series do not move between two scrapes: keep each value's text.
        self._formatted: dict[float, str] = {}

    # --- learning the layout

    def _slot(self, typ: str, key: str) -> int:
        # Every worker writes the same key text for a series: decode it once.
        known = self._key_slot.get(key)
        if known is not None:
            return known
        slot = self._key_slot[key] = self._new_slot(typ, key)
        return slot

    def _new_slot(self, typ: str, key: str) -> int:
        metric_name, sample_name, labels, help_text = json.loads(key)
        label_items = tuple(sorted(labels.items()))
        ident = (metric_name, sample_name, label_items)
        slot = self._slot_of.get(ident)
        if slot is not None:
            return slot
        slot = self._slot_of[ident] = len(self._slot_of)
        family_name = metric_name + "_total" if typ == "counter" else metric_name
        family = self._families.get(metric_name)
        if family is None:
            family = self._families[metric_name] = _Family(family_name, typ, help_text)
        if typ == "histogram":
            le = dict(label_items).get("le")
            series_labels = tuple(item for item in label_items if item[0] != "le")
            series = family.histograms.get(series_labels)
            if series is None:
                series = family.histograms[series_labels] = _Histogram(series_labels)
            if le is not None:
                series.buckets[float(le)] = slot
            else:
                series.sum_slot = slot
        else:
            family.lines.append(_Line(f"{sample_name}{labels_text(label_items)} ", slot))
        self._plan = None
        return slot

    def _read(self, file_path: str, typ: str) -> tuple[_FileIndex, np.ndarray] | None:
        try:
            with open(file_path, "rb") as handle:
                inode = os.fstat(handle.fileno()).st_ino
                head = handle.read(8)
                if len(head) < 8:
                    return None
                used = _INT.unpack_from(head)[0]
                data = head + handle.read(used - 8)
        except FileNotFoundError:  # folded away between the listing and now (under the lock: never)
            return None
        index = self._files.get(file_path)
        if index is None or index.inode != inode or index.parsed_to > used:
            index = self._files[file_path] = _FileIndex(inode=inode)
        pos = index.parsed_to
        while pos < used:
            length = _INT.unpack_from(data, pos)[0]
            if pos + 4 + length > used:
                raise RuntimeError(f"{file_path} is corrupted at byte {pos}")
            key = data[pos + 4:pos + 4 + length].decode("utf-8")
            pos += 4 + length + (8 - (length + 4) % 8)
            index.value_index.append(pos // 8)
            index.slots.append(self._slot(typ, key))
            pos += 16
        index.parsed_to = pos
        return index, np.frombuffer(data, dtype=np.float64)

    # --- writing the text

    def _build_plan(self) -> list[_FamilyPlan]:
        plan: list[_FamilyPlan] = []
        for family in self._families.values():
            header = f"# HELP {family.name} {escape_help(family.help)}\n# TYPE {family.name} {family.typ}\n"
            if family.typ == "histogram":
                series_plans = [_series_plan(family.name, series) for series in family.histograms.values()]
                plan.append(_FamilyPlan(header, [], series_plans))
            else:
                plan.append(_FamilyPlan(header, list(family.lines), []))
        return plan

    def render(self) -> str:
        with self._lock:
            with directory_lock(self.path, exclusive=False):
                files = glob.glob(os.path.join(self.path, "*.db"))
                gauge_files = []
                loaded = []
                for file_path in files:
                    typ = os.path.basename(file_path).split("_", 1)[0]
                    if typ not in ADDITIVE_TYPES:
                        gauge_files.append(file_path)
                        continue
                    read = self._read(file_path, typ)
                    if read is not None:
                        loaded.append(read)
                gauges = _render_gauges(gauge_files) if gauge_files else ""
            for gone in set(self._files) - set(files):
                del self._files[gone]
            # One vectorised gather-and-add per file: 28,000 values in well under a millisecond.
            totals = np.zeros(len(self._slot_of))
            for index, values in loaded:
                positions, slots = index.as_arrays()
                totals += np.bincount(slots, weights=values[positions], minlength=len(totals))
            if self._plan is None:
                self._plan = self._build_plan()
            return _render(self._plan, totals.tolist(), self._formatted) + gauges


def _series_plan(family_name: str, series: _Histogram) -> _SeriesPlan:
    bounds = sorted(series.buckets)
    prefixes = []
    for bound in bounds:
        labels = tuple(sorted((*series.labels, ("le", floatToGoString(bound)))))
        prefixes.append(f"{family_name}_bucket{labels_text(labels)} ")
    return _SeriesPlan(
        bucket_prefixes=prefixes,
        bucket_slots=[series.buckets[b] for b in bounds],
        count_prefix=f"{family_name}_count{labels_text(series.labels)} ",
        sum_prefix=f"{family_name}_sum{labels_text(series.labels)} ",
        sum_slot=series.sum_slot,
    )


def _render(plan: list[_FamilyPlan], totals: list[float], formatted: dict[float, str] | None = None) -> str:
    cache = formatted if formatted is not None else {}
    if len(cache) > 100_000:
        cache.clear()

    def fmt(value: float) -> str:
        text = cache.get(value)
        if text is None:
            text = cache[value] = floatToGoString(value)
        return text

    out: list[str] = []
    for family in plan:
        out.append(family.header)
        out.extend(f"{line.prefix}{fmt(totals[line.slot])}\n" for line in family.lines)
        for series in family.histograms:
            running = 0.0
            for prefix, slot in zip(series.bucket_prefixes, series.bucket_slots, strict=True):
                running += totals[slot]
                out.append(f"{prefix}{fmt(running)}\n")
            out.append(f"{series.count_prefix}{fmt(running)}\n")
            sum_value = totals[series.sum_slot] if series.sum_slot is not None else 0.0
            out.append(f"{series.sum_prefix}{fmt(sum_value)}\n")
    return "".join(out)


def _render_gauges(files: list[str]) -> str:
    class _Gauges(Collector):
        def collect(self) -> Iterable[Metric]:
            return MultiProcessCollector.merge(files, accumulate=True)

    registry = CollectorRegistry()
    registry.register(_Gauges())
    return generate_latest(registry).decode()


_expositions: dict[str, FastMultiProcessExposition] = {}


def render_directory(path: str) -> bytes:
    """The text exposition of every metric in a multiprocess directory."""
    exposition = _expositions.get(path)
    if exposition is None:
        exposition = _expositions[path] = FastMultiProcessExposition(path)
    return exposition.render().encode()
