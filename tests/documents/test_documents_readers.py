"""Reading real PDF, DOCX, TXT and Markdown files into sections and chunks, and refusing bad files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from documents_app.pipeline.chunking import chunk_sections, clean_text
from documents_app.pipeline.readers import ReadLimits, Section, SkipReason, UnreadableDocument
from documents_app.pipeline.readers import read_sections as read_within
from tests.documents.helpers import make_docx, make_pdf

LIMITS = ReadLimits(max_chars=1_000_000, max_paragraphs=100_000, max_pages=1000, max_xml_mb=50, max_seconds=60)


def read_sections(data: bytes, fmt: str) -> list[Section]:
    reading = read_within(data, fmt, LIMITS)
    assert not reading.cut
    return reading.sections

SECTIONS = [
    ("Opening Hours", "We open at nine in the morning and close at six in the evening on weekdays."),
    ("Parking", "Free visitor parking is behind the building, next to the bakery."),
]


def test_it_reads_each_section_of_a_generated_pdf(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "info.pdf", SECTIONS)
    sections = read_sections(pdf.read_bytes(), "pdf")
    assert [s.title for s in sections] == ["Opening Hours", "Parking"]
    assert "close at six in the evening" in clean_text(sections[0].text)


def test_it_reads_headings_and_paragraphs_of_a_generated_docx(tmp_path: Path) -> None:
    document = make_docx(tmp_path / "info.docx", SECTIONS)
    sections = read_sections(document.read_bytes(), "docx")
    assert [(s.title, s.text) for s in sections] == SECTIONS


def test_markdown_headings_start_sections() -> None:
    text = b"# Guide\n\n## Prices\nA visit costs $80.\n\n## Hours\nOpen daily.\n"
    assert [(s.title, s.text) for s in read_sections(text, "md")] == [
        ("Prices", "A visit costs $80."),
        ("Hours", "Open daily."),
    ]


def test_plain_text_headings_with_a_colon_start_sections_as_in_the_seed_sample() -> None:
    text = b"Business Hours:\n- Monday-Friday: 9:00 AM - 6:00 PM\n- Sunday: Closed\n\nPricing:\n- Hourly: $150\n"
    sections = read_sections(text, "txt")
    assert [s.title for s in sections] == ["Business Hours", "Pricing"]
    assert "Sunday: Closed" in sections[0].text


def test_chunks_keep_their_section_and_position_and_respect_the_size_limit(tmp_path: Path) -> None:
    long_body = " ".join(f"Sentence number {i} explains one more detail of the service." for i in range(40))
    document = make_docx(tmp_path / "long.docx", [("Services", long_body), ("Contact", "Call us on 555 0100.")])
    chunks = chunk_sections(read_sections(document.read_bytes(), "docx"), max_chars=300)
    assert all(len(c.text) <= 300 for c in chunks)
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert {c.section for c in chunks[:-1]} == {"Services"} and chunks[-1].section == "Contact"
    assert " ".join(c.text for c in chunks[:-1]).split() == long_body.split()


def test_a_word_hyphenated_across_pdf_lines_is_joined_again() -> None:
    assert clean_text("We offer consul-\ntations daily.") == "We offer consultations daily."


def _reason(data: bytes, fmt: str) -> str:
    with pytest.raises(UnreadableDocument) as caught:
        read_sections(data, fmt)
    return caught.value.reason


def test_a_password_protected_pdf_is_reported_as_encrypted(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "secret.pdf", SECTIONS, password="s3cret")
    assert _reason(pdf.read_bytes(), "pdf") == SkipReason.ENCRYPTED


def test_a_truncated_pdf_is_reported_as_corrupt(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "cut.pdf", SECTIONS).read_bytes()
    assert _reason(data[:300], "pdf") == SkipReason.CORRUPT


def test_a_damaged_docx_is_reported_as_corrupt() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("word/document.xml", "<not really word")
    assert _reason(buffer.getvalue(), "docx") == SkipReason.CORRUPT


def test_files_whose_contents_do_not_match_their_extension_are_reported_as_mislabelled(tmp_path: Path) -> None:
    pdf_bytes = make_pdf(tmp_path / "real.pdf", SECTIONS).read_bytes()
    assert _reason(b"just some text pretending to be a PDF", "pdf") == SkipReason.MISLABELLED
    assert _reason(pdf_bytes, "docx") == SkipReason.MISLABELLED
    assert _reason(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "txt") == SkipReason.MISLABELLED


def test_an_empty_or_blank_file_is_reported_as_empty() -> None:
    assert _reason(b"", "txt") == SkipReason.EMPTY
    assert _reason(b"  \n\n ", "md") == SkipReason.EMPTY
