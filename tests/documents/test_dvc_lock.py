"""dvc.lock matches the committed pipeline, and dvc-remote/ holds every output it names.

Without both, `dvc repro --pull` on a fresh clone warns of missing cache files
or reruns stages and leaves `git status` dirty. After changing the pipeline's
code, documents or parameters: `.venv/bin/dvc repro`, `.venv/bin/dvc push`,
and commit dvc.lock, metrics/*.json and dvc-remote/.
"""

from __future__ import annotations

import hashlib

import yaml

from tests.helpers import ROOT

LOCK = yaml.safe_load((ROOT / "dvc.lock").read_text())
FIX = "run .venv/bin/dvc repro and .venv/bin/dvc push, then commit dvc.lock, metrics/*.json and dvc-remote/"


def md5_of(relative: str) -> str:
    return hashlib.md5((ROOT / relative).read_bytes()).hexdigest()  # DVC's own content hash


def remote_has(md5: str) -> bool:
    return (ROOT / "dvc-remote/files/md5" / md5[:2] / md5[2:]).is_file()


def test_every_cached_output_in_dvc_lock_is_in_the_repositorys_remote() -> None:
    missing = [
        f"{stage}: {out['path']}"
        for stage, entry in LOCK["stages"].items()
        for out in entry["outs"]
        if not out["path"].startswith("metrics/") and not remote_has(out["md5"])
    ]
    assert not missing, f"not in dvc-remote/: {missing}; {FIX}"


def test_dvc_lock_records_the_current_code_parameters_and_documents_of_each_stage() -> None:
    documents = yaml.safe_load((ROOT / "data/raw/business_documents.dvc").read_text())["outs"][0]["md5"]
    assert remote_has(documents), f"the documents' listing is not in dvc-remote/; {FIX}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # An output of one stage that the next depends on is in DVC's cache, not in git: take its recorded hash.
    outputs = {out["path"]: out["md5"] for entry in LOCK["stages"].values() for out in entry["outs"]}
    stale = []
    for stage, entry in LOCK["stages"].items():
        for dep in entry["deps"]:
            path = dep["path"]
            if path == "data/raw/business_documents":
                current = documents
            else:
                current = outputs[path] if path in outputs else md5_of(path)
            if current != dep["md5"]:
                stale.append(f"{stage}: {path}")
        if entry["params"]["params.yaml"] != {stage: params[stage]}:
            stale.append(f"{stage}: params.yaml")
        for out in entry["outs"]:
            if out["path"].startswith("metrics/") and md5_of(out["path"]) != out["md5"]:
                stale.append(f"{stage}: {out['path']}")
    assert not stale, f"dvc.lock is out of date for {stale}; {FIX}"
