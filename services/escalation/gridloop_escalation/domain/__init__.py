"""The escalation rules as pure functions of case states, events and an explicit `now`."""
