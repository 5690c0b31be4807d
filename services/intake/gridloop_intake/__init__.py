"""Gridloop intake: takes residents' reports, records CaseReported, keeps the case register."""
