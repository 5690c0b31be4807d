"""What a check found: counts, violations by case, and the figures a reliability report quotes."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Violation:
    check: str
    case_id: str | None
    detail: str


@dataclass
class Report:
    tip: int = 0
    messages: int = 0
    events: int = 0
    copies: int = 0  # stream messages repeating an event id already in the log
    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    checks: Counter[str] = field(default_factory=Counter)  # check -> facts examined
    violations: list[Violation] = field(default_factory=list)
    projections: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    deadlines_missed: int = 0
    missed_under_clock_jump: int = 0
    max_lateness_seconds: float = 0.0  # longest a due deadline waited for its DeadlineMissed
    # Deadlines the case moved past after they were due with no DeadlineMissed at all (the
    # stage done late before escalation could say so), and the longest of those waits.
    deadlines_overtaken: int = 0
    max_overtaken_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long reading and checking took
    case_ids: set[str] = field(default_factory=set)  # every case in the log (not serialised)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, check: str, case_id: str | None, detail: str) -> None:
        self.violations.append(Violation(check, case_id, detail))

    def violation_counts(self) -> Counter[str]:
        return Counter(v.check for v in self.violations)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("case_ids")
        out["ok"] = self.ok
        out["statuses"] = dict(self.statuses)
        out["checks"] = dict(self.checks)
        return out

    def render(self, max_violations: int = 50) -> str:
        lines = [
            f"log: {self.messages} messages up to sequence {self.tip}, {self.events} events, "
            f"{self.copies} repeated event ids, {self.cases} cases (checked in "
            f"{self.seconds:.1f}s)",
            "cases by status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
        ]
        for schema, p in sorted(self.projections.items()):
            lines.append(f"projection {schema}: checkpoint {p['checkpoint']} (lag {p['lag']}), "
                         f"{p['cases']} cases")
        lines.append(f"deadlines missed: {self.deadlines_missed} "
                     f"({self.missed_under_clock_jump} under a jumped clock), longest wait past "
                     f"a deadline {self.max_lateness_seconds:.1f}s; overtaken unreported: "
                     f"{self.deadlines_overtaken}, longest {self.max_overtaken_seconds:.1f}s "
                     "past due")
        lines.append("checks: " + ", ".join(f"{k} {v}" for k, v in sorted(self.checks.items())))
        lines += [f"note: {n}" for n in self.notes]
        if self.ok:
            lines.append("violations: none")
        else:
            counts = self.violation_counts()
            lines.append(f"violations: {len(self.violations)} ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")")
            for v in self.violations[:max_violations]:
                lines.append(f"  {v.check} case={v.case_id or '-'}: {v.detail}")
            if len(self.violations) > max_violations:
                lines.append(f"  … {len(self.violations) - max_violations} more")
        return "\n".join(lines)
