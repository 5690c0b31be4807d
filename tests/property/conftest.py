"""The property tests import their helpers (four_services, case_histories, replay) as top-level
modules; this keeps that working whatever pytest's import mode."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
