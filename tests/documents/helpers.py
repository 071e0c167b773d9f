"""Helpers for the documents tests: real PDF and DOCX files, and throw-away copies of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docx
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

# The repository; bench/bench_documents.py uses these helpers too, outside Django and pytest.
ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = json.loads((ROOT / "documents_app/evaluation/techconsult_questions.json").read_text())


def make_pdf(path: Path, sections: list[tuple[str, str]], password: str | None = None) -> Path:
    """A real PDF with a bold heading line above each section's paragraph."""
    pdf = FPDF()
    pdf.add_page()
    for heading, body in sections:
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 11)
        pdf.multi_cell(0, 6, body, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(path))
    if password:
        writer = PdfWriter(clone_from=PdfReader(path))
        writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
        with path.open("wb") as handle:
            writer.write(handle)
    return path


def make_docx(path: Path, sections: list[tuple[str, str]]) -> Path:
    """A real DOCX with Heading 2 paragraphs above each section's body."""
    document = docx.Document()
    for heading, body in sections:
        document.add_heading(heading, level=2)
        document.add_paragraph(body)
    path.parent.mkdir(parents=True, exist_ok=True)
    document.save(str(path))
    return path


def tool_env() -> dict[str, str]:
    """The environment for dvc and manage.py children: this interpreter's `python` first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env=tool_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def fresh_clone(dest: Path) -> Path:
    """A copy of the repository's tracked files in a new git repository, as `git clone` would give."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run([*git, "commit", "-q", "-m", "clone"], dest)
    return dest


def questions_hit_rate(search, k: int = 3) -> tuple[float, list[str]]:
    """Share of the written customer questions whose answer is in the top k of `search(question, k)`."""
    hits, misses = 0, []
    for item in QUESTIONS["questions"]:
        results = search(item["q"], k)
        found = {(r["source"], r["section"]) for r in results}
        found |= {(a["source"], a["section"]) for r in results for a in r["also_in"]}
        if found & {tuple(answer) for answer in item["answers"]}:
            hits += 1
        else:
            misses.append(item["q"])
    return hits / len(QUESTIONS["questions"]), misses
