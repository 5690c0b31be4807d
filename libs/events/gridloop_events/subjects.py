"""The subject scheme — one place, documented, so outside subscribers can rely on it.

    <prefix>.case.<district>.<case_id>.<EventType>

- all events of a district:        `gridloop.case.370105.*.*`
- one event type everywhere:       `gridloop.case.*.*.CaseClosed`
- one case (the store's per-case concurrency check and `read`): `gridloop.case.*.<case_id>.*`

Tokens are restricted to [A-Za-z0-9_-] by the envelope, so no value can inject a wildcard or a dot.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "gridloop"


@dataclass(frozen=True)
class Subjects:
    prefix: str = DEFAULT_PREFIX

    @property
    def stream_name(self) -> str:
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_CASES"

    @property
    def all(self) -> str:
        return f"{self.prefix}.case.>"

    def event(self, district: str, case_id: str, event_type: str) -> str:
        return f"{self.prefix}.case.{district}.{case_id}.{event_type}"

    def case(self, case_id: str) -> str:
        return f"{self.prefix}.case.*.{case_id}.*"

    def district(self, district: str) -> str:
        return f"{self.prefix}.case.{district}.*.*"

    def of_type(self, event_type: str) -> str:
        return f"{self.prefix}.case.*.*.{event_type}"

    def parse(self, subject: str) -> tuple[str, str, str]:
        """(district, case_id, event_type) of a subject in this scheme."""
        head = f"{self.prefix}.case."
        if not subject.startswith(head):
            raise ValueError(f"subject {subject!r} is not under {head}")
        parts = subject[len(head) :].split(".")
        if len(parts) != 3:
            raise ValueError(f"subject {subject!r} does not have district.case.type")
        return parts[0], parts[1], parts[2]
