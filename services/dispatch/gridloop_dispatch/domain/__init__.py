"""Dispatch's pure rules: placement (tiers and the ladder), reactions, and commands."""

from .commands import (
    AcceptCase,
    CloseCase,
    DecideExtension,
    DispatchCase,
    NoteProgress,
    RequestExtension,
    ReturnCase,
    decide_accept,
    decide_close,
    decide_dispatch,
    decide_extension,
    decide_extension_request,
    decide_note,
    decide_return,
)
from .placement import Placement, Unplaceable, place, unit_above
from .reactions import on_callback_rated, on_deadline_missed, on_reported, react

__all__ = [
    "AcceptCase",
    "CloseCase",
    "DecideExtension",
    "DispatchCase",
    "NoteProgress",
    "Placement",
    "RequestExtension",
    "ReturnCase",
    "Unplaceable",
    "decide_accept",
    "decide_close",
    "decide_dispatch",
    "decide_extension",
    "decide_extension_request",
    "decide_note",
    "decide_return",
    "on_callback_rated",
    "on_deadline_missed",
    "on_reported",
    "place",
    "react",
    "unit_above",
]
