"""`gridloop` — one command for people who run Gridloop.

Each module of this package that defines `register(app)` adds its commands, so a new group of
commands is one new file (operators' replay and audit, the invariant checker, tokens…).
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

import gridloop_cli

app = typer.Typer(no_args_is_help=True, help="Gridloop: grid-based community case handling.")

for module_info in sorted(pkgutil.iter_modules(gridloop_cli.__path__), key=lambda m: m.name):
    if module_info.name == "main":
        continue
    module = importlib.import_module(f"gridloop_cli.{module_info.name}")
    register = getattr(module, "register", None)
    if register is not None:
        register(app)

if __name__ == "__main__":
    app()
