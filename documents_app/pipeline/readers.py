"""Readers that turn a business document into titled sections of plain text.

Each reader checks that the bytes are what the extension says before it
parses them, so a mislabelled file is reported as such rather than as a parser
crash. Every failure is an `UnreadableDocument` with a reason from
`SkipReason`; the pipeline records it and goes on with the other files.

Every reader works within `ReadLimits` (characters, paragraphs, pages, the
size of a DOCX's XML, seconds): at a limit it stops, keeps what it has read,
and says which limit cut the file. A small file can hold a lot: a 627 KB DOCX
of six million one-letter paragraphs took python-docx over 4 GB and 13
minutes, so DOCX is read as a stream of XML events and no tree is built.
"""

from __future__ import annotations

import io
import posixpath
import re
import time
import xml.parsers.expat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    deadline: float = 0.0  # time.monotonic() at which reading stops
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


# expat names a namespaced element "<namespace> <local name>".
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main "
_BODY, _P, _R, _T, _HYPERLINK = _W + "body", _W + "p", _W + "r", _W + "t", _W + "hyperlink"
_TBL, _TR, _TC, _PPR, _PSTYLE = _W + "tbl", _W + "tr", _W + "tc", _W + "pPr", _W + "pStyle"
_RUN_CHARACTERS = {_W + "tab": "\t", _W + "ptab": "\t", _W + "cr": "\n", _W + "noBreakHyphen": "-"}
_RELATIONSHIP = "http://schemas.openxmlformats.org/package/2006/relationships Relationship"
# Package relationships are read whole: a real part is a few KB.
_SMALL_PART_BYTES = 1024 * 1024
# Word nests a few dozen levels deep; the element stack is the reader's only memory that grows with nesting.
_MAX_DEPTH = 256
_FEED_BYTES = 64 * 1024


def _expat() -> xml.parsers.expat.XMLParserType:
    """A namespace-aware parser that refuses DTDs: Word writes none, and entity bombs need one."""
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")

    def refuse(*args: Any) -> None:
        raise UnreadableDocument(SkipReason.CORRUPT, "the DOCX holds a DTD, which Word never writes")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    return parser


def _feed(package: zipfile.ZipFile, info: zipfile.ZipInfo, parser: Any, limit: int, stop: Callable[[], bool]) -> bool:
    """Feed a part to `parser` piece by piece, at most `limit` bytes; True when the part holds more than that."""
    read = 0
    with package.open(info) as stream:
        while not stop():
            if read >= limit:
                return bool(stream.read(1))
            piece = stream.read(min(_FEED_BYTES, limit - read))
            if not piece:
                parser.Parse(b"", True)  # the end: a document left open is reported here
                return False
            read += len(piece)
            parser.Parse(piece, False)
    return False


def _relationship_target(package: zipfile.ZipFile, rels_name: str, kind: str, base: str) -> str | None:
    """The part that `rels_name` links to with a relationship type ending in `kind`, as a name in the ZIP."""
    try:
        info = package.getinfo(rels_name)
    except KeyError:
        return None
    if info.file_size > _SMALL_PART_BYTES:
        raise UnreadableDocument(SkipReason.CORRUPT, f"{rels_name} is {info.file_size} bytes, not a real DOCX")
    targets: list[str] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        if name == _RELATIONSHIP and attrs.get("Type", "").endswith(kind) and attrs.get("TargetMode") != "External":
            targets.append(attrs.get("Target", ""))

    parser = _expat()
    parser.StartElementHandler = start
    parser.Parse(package.read(info), True)
    if not targets:
        return None
    target = targets[0]
    return posixpath.normpath(target.lstrip("/") if target.startswith("/") else posixpath.join(base, target))


def _paragraph_styles(package: zipfile.ZipFile, name: str | None, limit: int) -> tuple[dict[str, str], str]:
    """Style id -> style name of the paragraph styles, and the id of the default one."""
    try:
        info = package.getinfo(name or "")
    except KeyError:
        return {}, ""  # headings are then told by their style id alone ("Heading2")
    names: dict[str, str] = {}
    current: list[str] = []  # the id of the paragraph style being read
    default = [""]

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag == _W + "style":
            current[:] = [attrs.get(_W + "styleId", "")] if attrs.get(_W + "type") == "paragraph" else []
            if current:
                names[current[0]] = current[0]
                if attrs.get(_W + "default") in ("1", "true"):
                    default[0] = current[0]
        elif tag == _W + "name" and current:
            names[current[0]] = attrs.get(_W + "val", current[0])

    parser = _expat()
    parser.StartElementHandler = start
    _feed(package, info, parser, limit, lambda: False)
    return names, default[0]


class _WordBody:
    """expat handlers that read a WordprocessingML body into sections without building its tree.

    Like python-docx: the body's paragraphs, and the rows of its tables as
    "cell | cell"; a paragraph's text is its runs' (also in hyperlinks), with
    tabs and line breaks. Text boxes and nested tables are left out.
    """

    def __init__(self, budget: _Budget, style_names: dict[str, str], default_style: str) -> None:
        self.budget, self.style_names, self.default_style = budget, style_names, default_style
        self.stack: list[str] = []
        self.sections: list[Section] = []
        self.title = ""
        self.body: list[str] = []
        self.paragraph: list[str] | None = None  # the text of the paragraph being read
        self.paragraph_at = self.table_at = self.cell_at = -1  # depths in the stack
        self.style, self.in_text, self.held = "", False, 0  # held: characters read but not yet taken
        self.row: list[str] | None = None
        self.cell: list[str] | None = None

    def start(self, name: str, attrs: dict[str, str]) -> None:
        stack = self.stack
        if not stack and name != _W + "document":
            raise UnreadableDocument(SkipReason.MISLABELLED, "not a Word document (an Excel or PowerPoint file?)")
        if len(stack) >= _MAX_DEPTH:
            raise UnreadableDocument(SkipReason.CORRUPT, f"XML nested more than {_MAX_DEPTH} levels deep")
        parent = stack[-1] if stack else ""
        depth = len(stack)
        stack.append(name)
        if self.budget.spent:
            return
        if self.paragraph is not None:
            inside = stack[self.paragraph_at + 1 : -1]  # the elements between the paragraph and this one
            if name == _PSTYLE and inside == [_PPR]:
                self.style = attrs.get(_W + "val", "")
            elif inside == [_R] or inside == [_HYPERLINK, _R]:
                if name == _T:
                    self.in_text = True
                elif name == _W + "br" and attrs.get(_W + "type", "textWrapping") == "textWrapping":
                    self._add("\n")
                elif name in _RUN_CHARACTERS:
                    self._add(_RUN_CHARACTERS[name])
        elif name == _P and (parent == _BODY or (self.cell is not None and depth == self.cell_at + 1)):
            if self.budget.next_paragraph():
                self.paragraph, self.paragraph_at, self.style = [], depth, self.default_style
        elif name == _TBL and parent == _BODY:
            self.table_at = depth
        elif name == _TR and self.table_at >= 0 and depth == self.table_at + 1:
            self.row = []
        elif name == _TC and self.row is not None and depth == self.table_at + 2:
            self.cell, self.cell_at = [], depth

    def text(self, data: str) -> None:
        if self.in_text and self.paragraph is not None:
            self._add(data)

    def _add(self, data: str) -> None:
        # Text beyond the character limit is not even held: one paragraph can be megabytes long.
        room = self.budget.limits.max_chars - self.budget.chars - self.held
        if len(data) > room:
            data = data[: max(room, 0)]
            self.budget.stop(CutLimit.CHARACTERS, f"read the first {self.budget.limits.max_chars} characters")
        self.held += len(data)
        self.paragraph.append(data)  # type: ignore[union-attr]

    def end(self, name: str) -> None:
        self.stack.pop()
        depth = len(self.stack)
        if name == _T:
            self.in_text = False
        if self.paragraph is not None and depth == self.paragraph_at:
            self._end_paragraph()
        elif name == _TC and self.cell is not None and depth == self.cell_at:
            self.row.append("\n".join(self.cell).strip())  # type: ignore[union-attr]
            self.cell = None
        elif name == _TR and self.row is not None and depth == self.table_at + 1:
            self._end_row()
        elif name == _TBL and depth == self.table_at:
            self.table_at = -1

    def _end_paragraph(self) -> None:
        text = "".join(self.paragraph or []).strip()
        self.paragraph = None
        if self.cell is not None:
            self.cell.append(text)
            return
        self.held = 0
        text = self.budget.take(text)
        if self.style_names.get(self.style, self.style).lower().startswith(("heading", "title")) and text:
            if self.body:
                self.sections.append(Section(self.title, "\n".join(self.body)))
            self.title, self.body = text, []
        elif text:
            self.body.append(text)

    def _end_row(self) -> None:
        self.held = 0
        line = self.budget.take(" | ".join(cell for cell in self.row or [] if cell))
        self.row = None
        if line:
            self.body.append(line)

    def finish(self) -> list[Section]:
        """The sections read, with the paragraph or table row a limit stopped in."""
        if self.cell is not None:
            self.row.append("\n".join(self.cell + ["".join(self.paragraph or [])]).strip())  # type: ignore[union-attr]
            self.paragraph = self.cell = None
        if self.paragraph is not None:
            self._end_paragraph()
        if self.row is not None:
            self._end_row()
        if self.body:
            self.sections.append(Section(self.title, "\n".join(self.body)))
        return self.sections


def read_docx(data: bytes, budget: _Budget) -> list[Section]:
    """Headings (paragraph styles named Heading or Title) start sections; table rows read as "a | b".

    The main XML part is read in pieces through expat, building no tree, so
    memory follows the limits, not the file; at most `max_xml_mb` of it is
    read, whatever its ZIP entry claims.
    """
    if not data.startswith(b"PK"):
        if data.startswith(b"\xd0\xcf\x11\xe0"):
            raise UnreadableDocument(SkipReason.ENCRYPTED, "an encrypted or legacy Word file, not DOCX")
        raise UnreadableDocument(SkipReason.MISLABELLED, "not a DOCX file (not a ZIP package)")
    xml_limit = budget.limits.max_xml_mb * 1024 * 1024
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
        main = _relationship_target(package, "_rels/.rels", "/officeDocument", "") or "word/document.xml"
        info = package.getinfo(main)
        folder, part = posixpath.split(main)
        styles = _relationship_target(package, posixpath.join(folder, "_rels", f"{part}.rels"), "/styles", folder)
        reader = _WordBody(budget, *_paragraph_styles(package, styles, xml_limit))
        parser = _expat()
        parser.StartElementHandler, parser.EndElementHandler = reader.start, reader.end
        parser.CharacterDataHandler = reader.text
        parser.buffer_text = True
        if _feed(package, info, parser, xml_limit, lambda: budget.spent or not budget.in_time()):
            mb = info.file_size // (1024 * 1024)
            budget.stop(CutLimit.XML_SIZE, f"read the first {budget.limits.max_xml_mb} MB of {main} ({mb} MB)")
    except UnreadableDocument:
        raise
    except xml.parsers.expat.ExpatError as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the DOCX cannot be parsed: {exc}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, ValueError, EOFError, OSError, zlib.error) as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the DOCX cannot be parsed: {exc}") from None
    return reader.finish()


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
