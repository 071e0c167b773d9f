"""Cleaning document text and splitting it into chunks that remember where they came from."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from documents_app.pipeline.readers import Section

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HYPHEN_BREAK = re.compile(r"(\w)-\n(\w)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_BULLET = re.compile(r"^\s*([-*•]|\d+[.)])\s+")


@dataclass(frozen=True)
class Chunk:
    section: str
    position: int  # 0-based order of the chunk in its document
    text: str


def clean_text(text: str) -> str:
    """Normalise Unicode, drop control characters, rejoin words hyphenated across lines.

    Lines inside a paragraph (as PDF extraction wraps them) are joined with a
    space; list items and blank-line paragraph breaks are kept.
    """
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in text.split("\n"):
        line = _SPACES.sub(" ", raw).strip()
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
        elif _BULLET.match(line):
            if current:
                paragraphs.append(" ".join(current))
            current = []
            paragraphs.append(line)
        else:
            current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def _pieces(paragraph: str, limit: int) -> list[str]:
    """A paragraph cut at sentence ends (then at spaces) into pieces of at most `limit` characters."""
    if len(paragraph) <= limit:
        return [paragraph]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > limit // 2 else limit
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def chunk_sections(sections: list[Section], max_chars: int) -> list[Chunk]:
    """Chunks of at most `max_chars` characters that never cross a section boundary.

    Paragraphs are packed together while they fit, so a short list (opening
    hours, a price list) stays in one chunk with its heading.
    """
    chunks: list[Chunk] = []
    for section in sections:
        cleaned = clean_text(section.text)
        if not cleaned:
            continue
        current = ""
        for paragraph in cleaned.split("\n"):
            for piece in _pieces(paragraph, max_chars):
                if current and len(current) + 1 + len(piece) > max_chars:
                    chunks.append(Chunk(section.title, len(chunks), current))
                    current = piece
                else:
                    current = f"{current}\n{piece}" if current else piece
        if current:
            chunks.append(Chunk(section.title, len(chunks), current))
    return chunks
