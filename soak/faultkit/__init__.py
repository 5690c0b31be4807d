"""Fault-injection kit shared by tests/faults and soak/run.py: a whole Gridloop on its own
NATS and PostgreSQL (which it may kill), a steady load that drives cases around the loop, and
the faults themselves."""
