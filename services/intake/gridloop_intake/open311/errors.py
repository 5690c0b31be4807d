"""The one way an Open311 call fails: a GeoReport error with its HTTP status."""

from __future__ import annotations


class Open311Error(Exception):
    """Rendered as the spec's error document; `code` is also the HTTP status."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description

    def __repr__(self) -> str:
        return f"Open311Error({self.code}, {self.description!r})"


def bad_request(description: str) -> Open311Error:
    return Open311Error(400, description)


def not_found(description: str) -> Open311Error:
    return Open311Error(404, description)
