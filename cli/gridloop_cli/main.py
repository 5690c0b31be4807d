"""`gridloop` — one command for people who run Gridloop."""

from __future__ import annotations

import typer

from . import local, simulate

app = typer.Typer(no_args_is_help=True, help="Gridloop: grid-based community case handling.")
app.command("up")(local.up)
app.command("simulate")(simulate.simulate)

if __name__ == "__main__":
    app()
