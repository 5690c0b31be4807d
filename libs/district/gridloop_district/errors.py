"""Errors raised when reference data is bad or a lookup names something it does not hold."""

from __future__ import annotations

from dataclasses import dataclass

# Enough to fix a file in one pass without burying the first problem under a flood.
_MAX_LISTED = 50


@dataclass(frozen=True)
class Problem:
    path: str  # where in the file, e.g. "units[3].grids[0]"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ReferenceDataError(ValueError):
    """District reference data that cannot be used; lists every problem found, with its path."""

    def __init__(self, source: str | None, problems: list[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        where = source or "<district data>"
        n = len(self.problems)
        lines = [
            f"invalid district reference data in {where} ({n} problem{'s' if n != 1 else ''}):"
        ]
        lines += [f"  - {p}" for p in self.problems[:_MAX_LISTED]]
        if n > _MAX_LISTED:
            lines.append(f"  ... and {n - _MAX_LISTED} more")
        super().__init__("\n".join(lines))


class UnknownCodeError(KeyError):
    """A lookup by a code the district does not hold (a grid, unit, category...)."""

    def __init__(self, what: str, code: object) -> None:
        self.what = what
        self.code = code
        super().__init__(what, code)

    def __str__(self) -> str:
        return f"unknown {self.what} {self.code!r}"


class NoCompetentUnitError(LookupError):
    """The district tier was asked for a category that has no competent department (OTHER)."""
