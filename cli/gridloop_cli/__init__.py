"""The `gridloop` command."""
