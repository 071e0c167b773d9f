"""What other apps hold of a business, so that erasing the business (metrics_app/erasure) reaches it too.

metrics_app depends on no other app (an import contract), so an app that keeps
a business's data registers a holding here from its AppConfig.ready():
documents_app registers its documents, knowledge-base entries and their DVC
objects. The business erasure asks every holding what it holds (for the
confirmation page and the dry run), whether it may erase now, to erase its
rows inside the erasure's transaction, and to erase its files once that
transaction has committed.
"""

from __future__ import annotations

from typing import Protocol


class HoldingFailed(Exception):
    """A holding could not erase all its files; the message says which step failed. Erasing again finishes."""


class BusinessHolding(Protocol):
    name: str

    def count(self, business_id: str) -> dict[str, int]:
        """What it holds of the business, by kind ({"documents": 3}): counts only, never the data."""
        ...

    def busy(self, business_id: str) -> str | None:
        """Why the business cannot be erased now (say, a pipeline run is reading its files), or None."""
        ...

    def erase_rows(self, business_id: str) -> dict[str, int]:
        """Delete its rows of the business, in the erasure's transaction; the counts deleted, by kind."""
        ...

    def erase_files(self, business_id: str) -> dict[str, int]:
        """Erase its files of the business once the rows are gone; the counts erased, by kind."""
        ...


_holdings: dict[str, BusinessHolding] = {}


def register(holding: BusinessHolding) -> None:
    """Add (or, by its name, replace) a holding: ready() may run more than once in tests."""
    _holdings[holding.name] = holding


def registered() -> list[BusinessHolding]:
    return [_holdings[name] for name in sorted(_holdings)]
