"""The two pipeline stages on generated documents: every parameter's effect, bad files, and the cache."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from documents_app.pipeline import stages as pipeline
from documents_app.pipeline.stages import KnowledgeBaseParams, ProcessParams
from tests.documents.helpers import make_docx, make_pdf

BODY = "Our clinic offers check-ups, cleaning and whitening. Every visit starts with a short conversation."


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw = root / "raw"
        self.cache = root / "cache"

    def add(self, relative: str, content: bytes | str) -> Path:
        path = self.raw / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def process(self, **overrides) -> dict:
        # The pipeline's own mechanics, on the instant method; the default method has tests of its own
        # (test_documents_retrieval_quality.py), where merging near-duplicates by meaning is expected.
        params = replace(ProcessParams(embedding_method="bm25"), **overrides)
        return pipeline.process_documents(
            self.raw, self.root / "emb.json", self.root / "m1.json", params, cache_dir=self.cache
        )

    def build(self, **overrides) -> dict:
        params = replace(KnowledgeBaseParams(), **overrides)
        return pipeline.update_knowledge_base(
            self.root / "emb.json", self.root / "kb.json", self.root / "m2.json", params
        )

    def documents(self) -> dict[str, dict]:
        report = json.loads((self.root / "emb.json").read_text())["documents"]
        return {f"{d['business_id']}/{d['source']}" if d["business_id"] else d["source"]: d for d in report}

    def kb(self) -> dict:
        return json.loads((self.root / "kb.json").read_text())


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def test_bad_files_are_skipped_with_their_reason_while_the_others_are_processed(ws: Workspace) -> None:
    make_pdf(ws.raw / "clinic/services.pdf", [("Services", BODY)])
    make_docx(ws.raw / "clinic/prices.docx", [("Prices", "A check-up costs $80 and a cleaning costs $60 per visit.")])
    make_pdf(ws.raw / "clinic/locked.pdf", [("Secret", BODY)], password="pw")
    ws.add("clinic/broken.pdf", make_pdf(ws.root / "whole.pdf", [("Services", BODY)]).read_bytes()[:200])
    ws.add("clinic/empty.txt", b"")
    ws.add("clinic/fake.docx", "plain text with a docx name " * 5)
    ws.add("clinic/sheet.xlsx", b"PK\x03\x04 spreadsheet")
    ws.add("clinic/short.md", "# Hi\nToo short.")
    ws.add("loose-file.txt", BODY)

    metrics = ws.process()

    docs = ws.documents()
    assert {name for name, d in docs.items() if d["status"] == "processed"} == {
        "clinic/services.pdf",
        "clinic/prices.docx",
    }
    assert {name: d["reason"] for name, d in docs.items() if d["status"] == "skipped"} == {
        "clinic/locked.pdf": "encrypted",
        "clinic/broken.pdf": "corrupt",
        "clinic/empty.txt": "empty",
        "clinic/fake.docx": "mislabelled",
        "clinic/sheet.xlsx": "unsupported_format",
        "clinic/short.md": "too_little_text",
        "loose-file.txt": "no_business_folder",
    }
    assert metrics["documents_seen"] == 9
    assert metrics["documents_processed"] == 2
    assert metrics["skipped_by_reason"] == {
        "corrupt": 1,
        "empty": 1,
        "encrypted": 1,
        "mislabelled": 1,
        "no_business_folder": 1,
        "too_little_text": 1,
        "unsupported_format": 1,
    }
    assert metrics["chunks"] >= 2
    written = json.loads((ws.root / "m1.json").read_text())
    measured = json.loads((ws.root / "last_run/m1.json").read_text())
    assert {**written, **measured} == metrics and "processing_time_seconds" in measured


def test_max_file_size_mb_skips_larger_files(ws: Workspace) -> None:
    ws.add("clinic/big.txt", "Services\n" + BODY * 40)  # about 4 KB
    ws.add("clinic/small.txt", "Services\n" + BODY)
    ws.process(max_file_size_mb=0.002)
    docs = ws.documents()
    assert docs["clinic/big.txt"]["reason"] == "too_large"
    assert docs["clinic/small.txt"]["status"] == "processed"
    ws.process(max_file_size_mb=10)
    assert ws.documents()["clinic/big.txt"]["status"] == "processed"


def test_supported_formats_limits_what_is_read(ws: Workspace) -> None:
    ws.add("clinic/faq.md", "## Services\n" + BODY)
    ws.add("clinic/info.txt", "Services\n" + BODY)
    ws.process(supported_formats=("txt",))
    docs = ws.documents()
    assert docs["clinic/faq.md"]["reason"] == "unsupported_format"
    assert docs["clinic/info.txt"]["status"] == "processed"


def test_min_text_length_skips_documents_with_too_little_text(ws: Workspace) -> None:
    ws.add("clinic/info.txt", "Services\n" + BODY)  # about 100 characters of text
    ws.process(min_text_length=50)
    assert ws.documents()["clinic/info.txt"]["status"] == "processed"
    ws.process(min_text_length=500)
    assert ws.documents()["clinic/info.txt"]["reason"] == "too_little_text"


def test_similarity_threshold_merges_near_duplicate_chunks_of_one_business(ws: Workspace) -> None:
    ws.add("clinic/a.md", "## Hours\nWe are open Monday to Friday from nine to six, and Saturday mornings.")
    ws.add("clinic/b.md", "## Hours\nWe are open Monday to Friday from nine to six, and on Saturday mornings.")
    ws.add("other-clinic/c.md", "## Hours\nWe are open Monday to Friday from nine to six, and Saturday mornings.")
    ws.process()

    merged = ws.build(similarity_threshold=0.85)
    assert merged["duplicates_merged"] == 1  # the other business's copy is never merged across businesses
    kept = [c for c in ws.kb()["chunks"] if c["business_id"] == "clinic"]
    assert len(kept) == 1
    assert kept[0]["also_in"] == [{"source": "b.md", "section": "Hours", "position": 0}]

    strict = ws.build(similarity_threshold=1.0)
    assert strict["duplicates_merged"] == 0
    assert len([c for c in ws.kb()["chunks"] if c["business_id"] == "clinic"]) == 2


def test_max_documents_per_topic_caps_how_many_documents_feed_a_topic(ws: Workspace) -> None:
    for name, text in [("a", "Cleaning costs $60."), ("b", "Whitening costs $250."), ("c", "Fillings start at $90.")]:
        ws.add(f"clinic/{name}.md", f"## Pricing\n{text} Prices include a follow-up call and written aftercare notes.")
    ws.process()

    capped = ws.build(max_documents_per_topic=2, similarity_threshold=0.99)
    assert capped["chunks_dropped_by_topic_cap"] == 1
    assert ws.kb()["businesses"]["clinic"]["topics"] == {"pricing": 2}
    assert ws.kb()["businesses"]["clinic"]["documents"] == ["a.md", "b.md"]

    ws.build(max_documents_per_topic=10, similarity_threshold=0.99)
    assert ws.kb()["businesses"]["clinic"]["topics"] == {"pricing": 3}


def test_a_rerun_after_one_document_changed_parses_only_that_document(ws: Workspace) -> None:
    for i in range(5):
        make_docx(ws.raw / f"clinic/doc{i}.docx", [(f"Topic {i}", f"{BODY} Detail number {i}.")])
    first = ws.process()
    assert (first["documents_parsed"], first["documents_from_cache"]) == (5, 0)
    ws.build()
    version = ws.kb()["version"]

    unchanged = ws.process()
    ws.build()
    assert (unchanged["documents_parsed"], unchanged["documents_from_cache"]) == (0, 5)
    assert ws.kb()["version"] == version

    make_docx(ws.raw / "clinic/doc3.docx", [("Topic 3", f"{BODY} A changed detail.")])
    rerun = ws.process()
    ws.build()
    assert (rerun["documents_parsed"], rerun["documents_from_cache"]) == (1, 4)
    assert ws.kb()["version"] != version
    assert any("A changed detail" in c["text"] for c in ws.kb()["chunks"])


def test_one_businesss_document_change_leaves_another_businesss_version_as_it_was(ws: Workspace) -> None:
    ws.add("clinic/prices.md", f"# Prices\n\n{BODY}")
    ws.add("salon/hours.md", "# Opening hours\n\nWe cut and colour hair from Monday to Saturday, nine to six.")
    ws.process()
    ws.build()
    before = ws.kb()
    assert before["businesses"]["clinic"]["version"] != before["businesses"]["salon"]["version"]

    ws.add("clinic/prices.md", f"# Prices\n\n{BODY} A whitening costs 120 euros.")
    ws.process()
    metrics = ws.build()
    after = ws.kb()
    assert after["businesses"]["salon"]["version"] == before["businesses"]["salon"]["version"]
    assert after["businesses"]["clinic"]["version"] != before["businesses"]["clinic"]["version"]
    assert after["version"] != before["version"]  # the build's version follows every business
    assert metrics["business_versions"] == {b: held["version"] for b, held in after["businesses"].items()}


def test_a_parameter_change_gives_every_business_a_new_version(ws: Workspace) -> None:
    ws.add("clinic/prices.md", f"# Prices\n\n{BODY}")
    ws.add("salon/hours.md", "# Opening hours\n\nWe cut and colour hair from Monday to Saturday, nine to six.")
    ws.process()
    ws.build()
    before = {b: held["version"] for b, held in ws.kb()["businesses"].items()}

    ws.build(similarity_threshold=0.9)  # the same chunks survive; only the parameter differs
    after = {b: held["version"] for b, held in ws.kb()["businesses"].items()}
    assert after.keys() == before.keys() == {"clinic", "salon"}
    assert all(after[b] != before[b] for b in before)


def test_bad_parameters_stop_the_stage_with_a_clear_message(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "process_documents:\n  embedding_method: magic\nupdate_knowledge_base:\n  similarity_threshold: 2\n"
    )
    with pytest.raises(pipeline.PipelineError) as caught:
        pipeline.load_params(params)
    assert "unknown embedding method 'magic'" in str(caught.value)
    assert "similarity_threshold must be in (0, 1]" in str(caught.value)


def test_a_parser_crash_on_one_file_skips_that_file_as_corrupt(ws: Workspace, monkeypatch) -> None:
    from documents_app.pipeline import readers

    def explode(data: bytes, budget):
        raise RecursionError("maximum recursion depth exceeded in a crafted file")

    monkeypatch.setitem(readers.READERS, "pdf", explode)
    make_pdf(ws.raw / "clinic/crafted.pdf", [("Services", BODY)])
    ws.add("clinic/info.txt", "Services\n" + BODY)
    metrics = ws.process()
    docs = ws.documents()
    assert (
        docs["clinic/crafted.pdf"]["reason"] == "corrupt" and "RecursionError" in docs["clinic/crafted.pdf"]["detail"]
    )
    assert docs["clinic/info.txt"]["status"] == "processed" and metrics["documents_processed"] == 1


def test_a_missing_embedding_package_stops_the_command_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from documents_app.search import embeddings

    def unavailable(self, texts):
        raise embeddings.MethodUnavailable("the minilm method needs the packages of requirements-semantic.txt")

    monkeypatch.setattr(embeddings.MiniLmMethod, "embed", unavailable)
    (tmp_path / "raw/clinic").mkdir(parents=True)
    (tmp_path / "raw/clinic/info.txt").write_text("Services\n" + BODY)
    params = tmp_path / "params.yaml"
    params.write_text("process_documents:\n  embedding_method: minilm\n")
    with pytest.raises(CommandError, match="requirements-semantic.txt"):
        call_command(
            "process_documents",
            "--params",
            str(params),
            "--raw-dir",
            str(tmp_path / "raw"),
            "--output",
            str(tmp_path / "emb.json"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--cache-dir",
            str(tmp_path / "cache"),
        )
    assert not (tmp_path / "emb.json").exists()
