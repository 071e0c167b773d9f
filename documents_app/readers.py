"""Readers that turn a business document into titled sections of plain text.

Each reader checks that the bytes are what the extension says before it
parses them, so a mislabelled file is reported as such rather than as a parser
crash. Every failure is an `UnreadableDocument` with a reason from
`SkipReason`; the pipeline records it and goes on with the other files.

Every reader works within `ReadLimits` (characters, paragraphs, pages, the
size of a DOCX's XML, seconds): at a limit it stops, keeps what it has read,
and says which limit cut the file. A small file can hold a lot: a 627 KB DOCX
of six million one-letter paragraphs took python-docx over 4 GB and 13
minutes, so DOCX is streamed rather than parsed whole.
"""

from __future__ import annotations

import io
import posixpath
import re
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class SkipReason:
    """Why a document was left out of the knowledge base (stored in outputs and the admin)."""

    TOO_LARGE = "too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LITTLE_TEXT = "too_little_text"
    EMPTY = "empty"
    CORRUPT = "corrupt"
    ENCRYPTED = "encrypted"
    MISLABELLED = "mislabelled"
    NO_BUSINESS_FOLDER = "no_business_folder"
    # Not a skip: the document was used up to a read limit; the detail names the limit.
    TRUNCATED = "truncated"


class UnreadableDocument(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ReadLimits:
    """How much of one document a reader takes; the pipeline fills it from the DOCUMENTS_READ_* settings."""

    max_chars: int
    max_paragraphs: int
    max_pages: int
    max_xml_mb: int
    max_seconds: float


@dataclass(frozen=True)
class Section:
    """A titled run of text from one document; `title` is "" before the first heading."""

    title: str
    text: str


@dataclass
class Reading:
    """What a reader got from a document; `cut` names the limit that stopped it early ("" when read whole)."""

    sections: list[Section]
    cut: str = ""
    cut_detail: str = ""


class CutLimit:
    """Which of the `ReadLimits` stopped a reader."""

    CHARACTERS = "characters"
    PARAGRAPHS = "paragraphs"
    PAGES = "pages"
    XML_SIZE = "xml_size"
    TIME = "time"


@dataclass
class _Budget:
    """What is left of a document's limits while a reader runs; the first limit reached is kept."""

    limits: ReadLimits
    chars: int = 0
    paragraphs: int = 0
    deadline: float = field(default=0.0)
    cut: str = ""
    cut_detail: str = ""

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.limits.max_seconds

    def stop(self, limit: str, detail: str) -> None:
        if not self.cut:
            self.cut, self.cut_detail = limit, detail

    def take(self, text: str) -> str:
        """`text`, shortened to what the character limit still allows."""
        room = self.limits.max_chars - self.chars
        if len(text) > room:
            text = text[: max(room, 0)]
            self.stop(CutLimit.CHARACTERS, f"read the first {self.limits.max_chars} characters")
        self.chars += len(text)
        return text

    def next_paragraph(self) -> bool:
        """False once the paragraph or time limit is reached: the reader stops there."""
        if self.paragraphs >= self.limits.max_paragraphs:
            self.stop(CutLimit.PARAGRAPHS, f"read the first {self.limits.max_paragraphs} paragraphs")
            return False
        self.paragraphs += 1
        return self.in_time()

    def in_time(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.stop(CutLimit.TIME, f"stopped after {self.limits.max_seconds:g} s of reading")
            return False
        return True

    @property
    def spent(self) -> bool:
        return bool(self.cut)


# A line that reads as a heading in text with no markup: short, no sentence
# punctuation at its end, starting with a capital. A trailing colon is allowed
# ("Business Hours:"), as the seed's sample writes its headings that way.
_HEADING_LINE = re.compile(r"^[A-Z0-9][^.!?;,]{1,70}:?$")


def sections_from_plain_text(text: str) -> list[Section]:
    """Split text without markup into sections at lines that look like headings.

    A heading line must be followed by a non-heading line, so a list of short
    items ("- Sunday: Closed") stays body text.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    first = next((i for i, line in enumerate(lines) if line.strip()), -1)
    # The next non-blank line after each line, found in one backward pass (a slice per line was
    # quadratic: minutes for a file of many short lines).
    following_of = [""] * len(lines)
    upcoming = ""
    for index in range(len(lines) - 1, -1, -1):
        following_of[index] = upcoming
        if lines[index].strip():
            upcoming = lines[index].strip()
    sections: list[Section] = []
    title, body = "", []
    last_heading = -2
    for index, line in enumerate(lines):
        stripped = line.strip()
        previous = lines[index - 1].strip() if index > 0 else ""
        following = following_of[index]
        # A wrapped line in the middle of a sentence (PDF text) is not a heading.
        starts_block = previous == "" or previous.endswith((".", "!", "?", ":", ")")) or last_heading == index - 1
        followed_by_body = following != "" and (
            not _HEADING_LINE.match(following) or following.startswith(("-", "*", "•"))
        )
        is_heading = (
            bool(_HEADING_LINE.match(stripped))
            and not stripped.startswith(("-", "*", "•"))
            and len(stripped.split()) <= 10
            and starts_block
            and (followed_by_body or index == first)
        )
        if is_heading:
            if "".join(body).strip():
                sections.append(Section(title, "\n".join(body).strip()))
            title, body, last_heading = stripped.rstrip(":").strip(), [], index
        else:
            body.append(line)
    if "".join(body).strip():
        sections.append(Section(title, "\n".join(body).strip()))
    return sections


_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def sections_from_markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    title, body = "", []
    in_code = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _MD_HEADING.match(line)
        if match:
            if "".join(body).strip():
                sections.append(Section(title, "\n".join(body).strip()))
            title, body = match.group(2).strip(), []
        else:
            body.append(line)
    if "".join(body).strip():
        sections.append(Section(title, "\n".join(body).strip()))
    return sections


def _decode_text(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise UnreadableDocument(SkipReason.MISLABELLED, "binary data in a text file")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UnreadableDocument(SkipReason.CORRUPT, "text is neither UTF-8 nor Windows-1252")


def read_txt(data: bytes, budget: _Budget) -> list[Section]:
    return sections_from_plain_text(budget.take(_decode_text(data)))


def read_md(data: bytes, budget: _Budget) -> list[Section]:
    return sections_from_markdown(budget.take(_decode_text(data)))


def read_pdf(data: bytes, budget: _Budget) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise UnreadableDocument(SkipReason.MISLABELLED, "not a PDF file (no %PDF- header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # An owner-password-only PDF opens with the empty password; others are refused.
            try:
                if not reader.decrypt(""):
                    raise UnreadableDocument(SkipReason.ENCRYPTED, "the PDF needs a password")
            except (NotImplementedError, FileNotDecryptedError) as exc:
                raise UnreadableDocument(SkipReason.ENCRYPTED, f"the PDF cannot be decrypted: {exc}") from None
        pages: list[str] = []
        total = len(reader.pages)
        for number, page in enumerate(reader.pages):
            if number >= budget.limits.max_pages:
                budget.stop(CutLimit.PAGES, f"read the first {budget.limits.max_pages} of {total} pages")
                break
            # Checked between pages: one page's extraction is not interrupted.
            if not budget.in_time():
                break
            pages.append(budget.take(page.extract_text() or ""))
            if budget.spent:
                break
    except UnreadableDocument:
        raise
    except FileNotDecryptedError:
        raise UnreadableDocument(SkipReason.ENCRYPTED, "the PDF needs a password") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the PDF cannot be parsed: {exc}") from None
    return sections_from_plain_text("\n".join(pages))


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_RELATIONSHIPS = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
# Package parts read whole (relationships): a real one is a few KB.
_SMALL_PART_BYTES = 1024 * 1024


class _CappedStream:
    """A part's bytes up to `limit`; `capped` turns true when the part had more."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream, self.left, self.capped = stream, limit, False

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            self.capped = self.capped or bool(self.stream.read(1))
            return b""
        data = self.stream.read(self.left if size < 0 else min(size, self.left))
        self.left -= len(data)
        return data


def _relationship_target(package: zipfile.ZipFile, rels_name: str, kind: str, base: str) -> str | None:
    """The part that `rels_name` links to with a relationship type ending in `kind`, as a name in the ZIP."""
    from lxml import etree

    try:
        info = package.getinfo(rels_name)
    except KeyError:
        return None
    if info.file_size > _SMALL_PART_BYTES:
        raise UnreadableDocument(SkipReason.CORRUPT, f"{rels_name} is {info.file_size} bytes, not a real DOCX")
    root = etree.fromstring(package.read(info), etree.XMLParser(resolve_entities=False, no_network=True))
    for relationship in root.iter(_RELATIONSHIPS):
        if relationship.get("Type", "").endswith(kind) and relationship.get("TargetMode") != "External":
            target = relationship.get("Target", "")
            return posixpath.normpath(target.lstrip("/") if target.startswith("/") else posixpath.join(base, target))
    return None


def _paragraph_styles(package: zipfile.ZipFile, name: str | None, limit: int) -> tuple[dict[str, str], str]:
    """Style id -> style name of the paragraph styles, and the id of the default one."""
    from lxml import etree

    try:
        info = package.getinfo(name or "")
    except KeyError:
        return {}, ""
    if info.file_size > limit:
        return {}, ""  # headings are then told by their style id alone ("Heading2")
    root = etree.fromstring(package.read(info), etree.XMLParser(resolve_entities=False, no_network=True))
    names, default = {}, ""
    for style in root.iter(f"{_W}style"):
        if style.get(f"{_W}type") != "paragraph":
            continue
        style_id = style.get(f"{_W}styleId", "")
        label = style.find(f"{_W}name")
        names[style_id] = label.get(f"{_W}val", style_id) if label is not None else style_id
        if style.get(f"{_W}default") in ("1", "true"):
            default = style_id
    return names, default


def _paragraph_text(paragraph) -> str:  # type: ignore[no-untyped-def]
    """A paragraph's text as Word shows it: its runs (also inside hyperlinks), tabs and line breaks."""
    parts: list[str] = []
    for run in paragraph.iterchildren(f"{_W}r", f"{_W}hyperlink"):
        for piece in run.iterchildren(f"{_W}r") if run.tag == f"{_W}hyperlink" else (run,):
            for item in piece.iterchildren():
                tag = item.tag
                if tag == f"{_W}t":
                    parts.append(item.text or "")
                elif tag in (f"{_W}tab", f"{_W}ptab"):
                    parts.append("\t")
                elif tag == f"{_W}br" and item.get(f"{_W}type") in (None, "textWrapping") or tag == f"{_W}cr":
                    parts.append("\n")
                elif tag == f"{_W}noBreakHyphen":
                    parts.append("-")
    return "".join(parts)


def read_docx(data: bytes, budget: _Budget) -> list[Section]:
    """Headings (paragraph styles named Heading or Title) start sections; table rows read as "a | b".

    The main XML part is streamed (lxml iterparse) and each body element is
    dropped once read, so memory follows the limits, not the file; at most
    `max_xml_mb` of it is read, whatever its ZIP entry claims.
    """
    from lxml import etree

    if not data.startswith(b"PK"):
        if data.startswith(b"\xd0\xcf\x11\xe0"):
            raise UnreadableDocument(SkipReason.ENCRYPTED, "an encrypted or legacy Word file, not DOCX")
        raise UnreadableDocument(SkipReason.MISLABELLED, "not a DOCX file (not a ZIP package)")
    xml_limit = budget.limits.max_xml_mb * 1024 * 1024
    sections: list[Section] = []
    title, body = "", []
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        main = _relationship_target(package, "_rels/.rels", "/officeDocument", "") or "word/document.xml"
        info = package.getinfo(main)
        folder, part = posixpath.split(main)
        styles_part = _relationship_target(package, posixpath.join(folder, "_rels", f"{part}.rels"), "/styles", folder)
        style_names, default_style = _paragraph_styles(package, styles_part, xml_limit)
        with package.open(info) as raw:
            stream = _CappedStream(raw, xml_limit)
            events = etree.iterparse(stream, events=("start", "end"), resolve_entities=False, no_network=True)
            try:
                for event, element in events:
                    if event == "start":
                        if element.getparent() is None and element.tag != f"{_W}document":
                            raise UnreadableDocument(
                                SkipReason.MISLABELLED, f"{main} is not a Word document (an Excel or PowerPoint file?)"
                            )
                        continue
                    if element.tag == f"{_W}p" and not budget.next_paragraph():
                        break
                    parent = element.getparent()
                    if parent is None or parent.tag != f"{_W}body":
                        continue  # a paragraph of a table cell: read with its table
                    if element.tag == f"{_W}p":
                        style_element = element.find(f"{_W}pPr/{_W}pStyle")
                        style = style_element.get(f"{_W}val", "") if style_element is not None else default_style
                        text = budget.take(_paragraph_text(element).strip())
                        if style_names.get(style, style).lower().startswith(("heading", "title")) and text:
                            if body:
                                sections.append(Section(title, "\n".join(body)))
                            title, body = text, []
                        elif text:
                            body.append(text)
                    elif element.tag == f"{_W}tbl":
                        for row in element.iterchildren(f"{_W}tr"):
                            cells = [
                                "\n".join(_paragraph_text(p) for p in cell.iterchildren(f"{_W}p")).strip()
                                for cell in row.iterchildren(f"{_W}tc")
                            ]
                            line = budget.take(" | ".join(c for c in cells if c))
                            if line:
                                body.append(line)
                    # Read: drop it and what came before, so the tree never grows with the document.
                    element.clear()
                    while element.getprevious() is not None:
                        del parent[0]
                    if budget.spent:
                        break
            except etree.XMLSyntaxError:
                if not stream.capped:
                    raise
            if stream.capped:
                budget.stop(
                    CutLimit.XML_SIZE,
                    f"read the first {budget.limits.max_xml_mb} MB of {main} ({info.file_size // (1024 * 1024)} MB)",
                )
    except UnreadableDocument:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError, zlib.error) as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the DOCX cannot be parsed: {exc}") from None
    except etree.LxmlError as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the DOCX cannot be parsed: {type(exc).__name__}") from None
    if body:
        sections.append(Section(title, "\n".join(body)))
    return sections


READERS: dict[str, Callable[[bytes, _Budget], list[Section]]] = {
    "pdf": read_pdf,
    "docx": read_docx,
    "txt": read_txt,
    "md": read_md,
}


def format_of(path: Path) -> str:
    """The format a file claims by its extension, lower case without the dot ("" when none)."""
    suffix = path.suffix.lower().lstrip(".")
    return "md" if suffix == "markdown" else suffix


def read_sections(data: bytes, fmt: str, limits: ReadLimits) -> Reading:
    """The sections of a document in format `fmt`, within `limits`; UnreadableDocument when it cannot be read."""
    if not data.strip():
        raise UnreadableDocument(SkipReason.EMPTY, "the file is empty")
    reader = READERS.get(fmt)
    if reader is None:
        raise UnreadableDocument(SkipReason.UNSUPPORTED_FORMAT, f"no reader for .{fmt}")
    budget = _Budget(limits)
    sections = reader(data, budget)
    return Reading(sections, budget.cut, budget.cut_detail)
