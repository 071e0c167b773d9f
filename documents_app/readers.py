"""Readers that turn a business document into titled sections of plain text.

Each reader checks that the bytes are what the extension says before it
parses them, so a mislabelled file is reported as such rather than as a parser
crash. Every failure is an `UnreadableDocument` with a reason from
`SkipReason`; the pipeline records it and goes on with the other files.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


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


class UnreadableDocument(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Section:
    """A titled run of text from one document; `title` is "" before the first heading."""

    title: str
    text: str


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
    sections: list[Section] = []
    title, body = "", []
    last_heading = -2
    for index, line in enumerate(lines):
        stripped = line.strip()
        previous = lines[index - 1].strip() if index > 0 else ""
        following = next((nxt.strip() for nxt in lines[index + 1 :] if nxt.strip()), "")
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


def read_txt(data: bytes) -> list[Section]:
    return sections_from_plain_text(_decode_text(data))


def read_md(data: bytes) -> list[Section]:
    return sections_from_markdown(_decode_text(data))


def read_pdf(data: bytes) -> list[Section]:
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
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnreadableDocument:
        raise
    except FileNotDecryptedError:
        raise UnreadableDocument(SkipReason.ENCRYPTED, "the PDF needs a password") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the PDF cannot be parsed: {exc}") from None
    return sections_from_plain_text("\n".join(pages))


def read_docx(data: bytes) -> list[Section]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    if not data.startswith(b"PK"):
        if data.startswith(b"\xd0\xcf\x11\xe0"):
            raise UnreadableDocument(SkipReason.ENCRYPTED, "an encrypted or legacy Word file, not DOCX")
        raise UnreadableDocument(SkipReason.MISLABELLED, "not a DOCX file (not a ZIP package)")
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnreadableDocument(SkipReason.CORRUPT, f"the DOCX cannot be parsed: {exc}") from None
    except Exception as exc:  # lxml raises its own XML errors for a damaged part
        raise UnreadableDocument(SkipReason.CORRUPT, f"the DOCX cannot be parsed: {type(exc).__name__}") from None
    sections: list[Section] = []
    title, body = "", []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        if style.startswith(("Heading", "Title")) and text:
            if body:
                sections.append(Section(title, "\n".join(body)))
            title, body = text, []
        elif text:
            body.append(text)
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells if cell.text.strip()]
            if cells:
                body.append(" | ".join(cells))
    if body:
        sections.append(Section(title, "\n".join(body)))
    return sections


READERS: dict[str, Callable[[bytes], list[Section]]] = {
    "pdf": read_pdf,
    "docx": read_docx,
    "txt": read_txt,
    "md": read_md,
}


def format_of(path: Path) -> str:
    """The format a file claims by its extension, lower case without the dot ("" when none)."""
    suffix = path.suffix.lower().lstrip(".")
    return "md" if suffix == "markdown" else suffix


def read_sections(data: bytes, fmt: str) -> list[Section]:
    """The sections of a document in format `fmt`; UnreadableDocument when it cannot be read."""
    if not data.strip():
        raise UnreadableDocument(SkipReason.EMPTY, "the file is empty")
    reader = READERS.get(fmt)
    if reader is None:
        raise UnreadableDocument(SkipReason.UNSUPPORTED_FORMAT, f"no reader for .{fmt}")
    return reader(data)
