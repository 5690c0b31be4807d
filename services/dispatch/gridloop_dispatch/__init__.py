"""Gridloop dispatch: routes each case to the tier and unit that must handle it, with deadlines."""
