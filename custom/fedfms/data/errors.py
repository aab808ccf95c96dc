"""The error every preparer and reader raises for a bad input file, naming the file."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A problem with one input file; the message starts with the file it concerns.

    The writer adds where it happened: ``site`` (the site being prepared) and ``case`` (the case id, or
    None for a problem with the site as a whole, e.g. a missing folder).
    """

    def __init__(self, source: str | Path, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source, self.problem = str(source), problem
        self.site: str | None = None
        self.case: str | None = None


def read_error(path: str | Path, exc: BaseException) -> DataError:
    """DataError for a file that could not be read (corrupted, truncated, wrong format)."""
    return DataError(path, f"unreadable or corrupted file ({type(exc).__name__}: {exc})")
