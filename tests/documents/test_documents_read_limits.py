"""A hostile document cannot eat the machine: readers stop at their limits, keep what they read, and say why."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from documents_app.models import Document, DocumentStatus
from documents_app.pipeline import stages as pipeline
from documents_app.pipeline.readers import ReadLimits, SkipReason, UnreadableDocument, read_sections
from documents_app.services import processed_documents, sync_documents
from metrics_app.models import Business
from tests.documents.helpers import make_docx, make_pdf, tool_env
from tests.helpers import ROOT

LIMITS = ReadLimits(max_chars=1_000_000, max_paragraphs=100_000, max_pages=1000, max_xml_mb=50, max_seconds=60)
WORD = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
PACKAGE_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="word/document.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>'
)


def tiny_paragraphs_docx(path: Path, paragraphs: int, text: str = "a") -> Path:
    """A DOCX of `paragraphs` one-word paragraphs, streamed into the ZIP: huge as XML, small on disk."""
    paragraph = f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", PACKAGE_RELS)
        with archive.open("word/document.xml", "w") as part:
            part.write(f'<?xml version="1.0" encoding="UTF-8"?><w:document {WORD}><w:body>'.encode())
            block = paragraph * 10_000
            for _ in range(paragraphs // 10_000):
                part.write(block)
            part.write(paragraph * (paragraphs % 10_000))
            part.write(b"</w:body></w:document>")
    return path


# Runs the real stage command in a fresh process that reports its own peak memory. Its address space is
# capped at 2 GB, so a reader that does load the whole document fails instead of exhausting the machine.
MEASURED_STAGE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
import django
django.setup()
from django.core.management import call_command
call_command("process_documents", *sys.argv[1:])
# VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec, so a
# test process that had loaded a model would be counted here.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": peak_kb / 1024}))
"""


@pytest.mark.slow
def test_a_small_docx_of_six_million_paragraphs_is_cut_at_the_paragraph_limit_in_bounded_memory(
    tmp_path: Path,
) -> None:
    hostile = tiny_paragraphs_docx(tmp_path / "raw/clinic/flood.docx", 6_000_000)
    assert hostile.stat().st_size < 700 * 1024  # as small on disk as the file that took 4 GB
    with zipfile.ZipFile(hostile) as archive:
        assert archive.getinfo("word/document.xml").file_size > 200_000_000  # 200 MB of XML

    # The reader's memory is the bound here, so the stage embeds with the method that loads no model.
    params = tmp_path / "params.yaml"
    params.write_text(re.sub(r"embedding_method: \S+", "embedding_method: bm25", (ROOT / "params.yaml").read_text()))
    finished = subprocess.run(
        [sys.executable, "-c", MEASURED_STAGE, "--raw-dir", "raw", "--output", "emb.json", "--metrics", "m.json"]
        + ["--cache-dir", "cache", "--params", str(params)],
        cwd=tmp_path,
        env={**tool_env(), "DJANGO_SETTINGS_MODULE": "mlops_site.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr

    (document,) = json.loads((tmp_path / "emb.json").read_text())["documents"]
    assert document["status"] == "processed" and document["reason"] == SkipReason.TRUNCATED
    assert "first 100000 paragraphs" in document["detail"] and "DOCUMENTS_READ_MAX_PARAGRAPHS" in document["detail"]
    assert 0 < document["text_length"] <= 200_000  # 100,000 one-letter paragraphs and their separators
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["documents_cut"] == 1 and metrics["cut_by_limit"] == {"paragraphs": 1}
    # python-docx needed over 4 GB for this file (1.8 GB before the 2 GB cap stopped it); the reader builds no
    # XML tree. Its peak was 165-405 MB here, by the database driver and the machine's load: a quarter of
    # the tree-building reader's is the bound.
    assert json.loads(finished.stdout.splitlines()[-1])["peak_rss_mb"] < 512


def test_a_docx_is_cut_at_the_character_limit_and_keeps_its_first_sections(tmp_path: Path) -> None:
    body = "Every visit starts with a short conversation about what you need. " * 40
    document = make_docx(tmp_path / "long.docx", [(f"Topic {i}", body) for i in range(10)])
    reading = read_sections(document.read_bytes(), "docx", ReadLimits(**{**vars(LIMITS), "max_chars": 6000}))
    assert reading.cut == "characters" and reading.cut_detail == "read the first 6000 characters"
    assert sum(len(s.title) + len(s.text) for s in reading.sections) <= 6000
    assert [s.title for s in reading.sections][:2] == ["Topic 0", "Topic 1"]


def test_one_docx_paragraph_of_millions_of_runs_is_cut_at_the_character_limit(tmp_path: Path) -> None:
    path = tmp_path / "one.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/document.xml", "w") as part:
            part.write(f"<w:document {WORD}><w:body><w:p>".encode())
            for _ in range(200):
                part.write(b"<w:r><w:t>a</w:t></w:r>" * 10_000)
            part.write(b"</w:p></w:body></w:document>")
    reading = read_sections(path.read_bytes(), "docx", ReadLimits(**{**vars(LIMITS), "max_chars": 5000}))
    assert reading.cut == "characters"
    assert [s.text for s in reading.sections] == ["a" * 5000]


def test_a_docx_with_a_dtd_is_refused_as_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bomb.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(
            "word/document.xml",
            f'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            f"<w:document {WORD}><w:body><w:p><w:r><w:t>&b;</w:t></w:r></w:p></w:body></w:document>",
        )
    with pytest.raises(UnreadableDocument) as caught:
        read_sections(path.read_bytes(), "docx", LIMITS)
    assert caught.value.reason == SkipReason.CORRUPT and "DTD" in caught.value.detail


def test_a_docx_whose_xml_is_over_the_size_limit_is_read_up_to_it(tmp_path: Path) -> None:
    document = tiny_paragraphs_docx(tmp_path / "big.docx", 90_000, text="word")  # about 3.3 MB of XML
    reading = read_sections(document.read_bytes(), "docx", ReadLimits(**{**vars(LIMITS), "max_xml_mb": 1}))
    assert reading.cut == "xml_size" and "read the first 1 MB of word/document.xml" in reading.cut_detail
    (section,) = reading.sections
    assert 20_000 < section.text.count("word") < 30_000  # the paragraphs in the first MB, nothing after


def test_a_pdf_is_cut_at_the_page_limit(tmp_path: Path) -> None:
    pages = [(f"Page {i} Topic", f"Sentence {i}. " * 300) for i in range(3)]
    pdf = make_pdf(tmp_path / "three.pdf", pages)
    reading = read_sections(pdf.read_bytes(), "pdf", ReadLimits(**{**vars(LIMITS), "max_pages": 1}))
    assert reading.cut == "pages" and reading.cut_detail.startswith("read the first 1 of ")
    text = " ".join(s.text for s in reading.sections)
    assert "Sentence 0." in text and "Sentence 2." not in text


def test_a_text_file_is_cut_at_the_character_limit() -> None:
    text = b"Prices\n" + b"A cleaning costs $60.\n" * 10_000
    reading = read_sections(text, "txt", ReadLimits(**{**vars(LIMITS), "max_chars": 2000}))
    assert reading.cut == "characters" and sum(len(s.text) for s in reading.sections) <= 2000


def test_a_reader_out_of_time_stops_and_says_so(tmp_path: Path) -> None:
    document = tiny_paragraphs_docx(tmp_path / "slow.docx", 1000)
    reading = read_sections(document.read_bytes(), "docx", ReadLimits(**{**vars(LIMITS), "max_seconds": 0}))
    assert reading.cut == "time" and reading.sections == []


@pytest.mark.django_db
def test_a_cut_document_is_listed_as_processed_with_the_reason_it_was_cut(
    tmp_path: Path,
    settings,
) -> None:
    settings.DOCUMENTS_PIPELINE_ROOT = tmp_path
    raw = tmp_path / pipeline.RAW_DIR
    tiny_paragraphs_docx(raw / "clinic/flood.docx", 5000, text="Open daily.")
    (raw / "clinic/hours.txt").write_text(
        "Opening Hours\nWe open at nine in the morning and close at six in the evening on weekdays.\n"
    )
    settings.DOCUMENTS_READ_MAX_PARAGRAPHS = 1000
    metrics = pipeline.process_documents(
        raw, tmp_path / "emb.json", tmp_path / "m.json", pipeline.ProcessParams(), tmp_path / "cache"
    )
    assert (metrics["documents_processed"], metrics["documents_cut"]) == (2, 1)

    Business.objects.create(id="clinic")
    sync_documents(processed_documents(tmp_path / "emb.json"))
    flood = Document.objects.get(path="clinic/flood.docx")
    assert flood.status == DocumentStatus.PROCESSED and flood.skip_reason == "truncated"
    assert flood.skip_detail.startswith("read the first 1000 paragraphs")
    assert "DOCUMENTS_READ_MAX_PARAGRAPHS" in flood.skip_detail
    assert Document.objects.get(path="clinic/hours.txt").skip_reason == ""
