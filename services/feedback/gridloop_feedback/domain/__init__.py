"""The feedback rules as pure functions on plain data: no I/O, no clock but the one passed in."""

from .callback import (
    DEFAULT_CALLBACK_SECONDS,
    PURPOSE_SCHEDULE,
    CallbackLimits,
    callback_due_at,
    callback_pending,
    district_callback_limits,
    schedule_callback,
)
from .rates import (
    DEFINITIONS,
    Rate,
    closure_timing,
    is_resolved,
    is_satisfied,
    report_month,
)
from .rating import RateCallback, decide_rating, rating_refusal

__all__ = [
    "DEFAULT_CALLBACK_SECONDS",
    "DEFINITIONS",
    "PURPOSE_SCHEDULE",
    "CallbackLimits",
    "RateCallback",
    "Rate",
    "callback_due_at",
    "callback_pending",
    "closure_timing",
    "decide_rating",
    "district_callback_limits",
    "is_resolved",
    "is_satisfied",
    "rating_refusal",
    "report_month",
    "schedule_callback",
]
