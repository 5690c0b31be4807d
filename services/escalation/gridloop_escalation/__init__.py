"""Gridloop escalation: supervision (督办) of every live deadline of every case.

网格吹哨、部门报到 — the service blows the whistle (DeadlineMissed, DeadlineApproaching); the
dispatch service reacts by sending the case up a tier; the report-in view counts who answered.
"""
