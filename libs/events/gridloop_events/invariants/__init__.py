"""The independent invariant checker: the log, folded, against every projection.

`run_check(nats_url, database_url, ...)` reads the stream and each service's schema (never the
services' own counters) and returns a `Report`: no case lost, duplicated, stranded or stuck, each
projection equal to the fold of the log at its checkpoint, the figures exact. `gridloop check`
is its command line; the fault tests and the soak runner call it directly.
"""

from .checks import CheckOptions, check
from .collect import DEFAULT_SPECS, run_check
from .log import LogSnapshot, read_log
from .readmodels import ProjectionSpec, parse_specs, read_model
from .report import Report, Violation

__all__ = [
    "DEFAULT_SPECS",
    "CheckOptions",
    "LogSnapshot",
    "ProjectionSpec",
    "Report",
    "Violation",
    "check",
    "parse_specs",
    "read_log",
    "read_model",
    "run_check",
]
