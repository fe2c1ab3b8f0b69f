"""What every ``tailor`` command shares: the typer app, the consoles, the model-dir option, one-line failures
and the training side's guard."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from tailorrt.extras import require_training

app = typer.Typer(help="tailorrt: one frozen backbone, many small task networks.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
out = Console()
if not out.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
    out = Console(width=160)
err = Console(stderr=True)

ModelDirOpt = typer.Option("runs", "--model-dir", help="Model directory holding backbone/ and tasks/.")


def training_side(command: Callable) -> Callable:
    """A command of the training side: in a serving install (no torch) it stops with one line naming
    ``pip install 'tailorrt[train]'`` (exit code 2) before it imports anything of that side."""

    name = "tailor " + command.__name__.rstrip("_")

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        require_training(name)
        return command(*args, **kwargs)

    return run


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag N`` or ``--flag=N``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out


def names(csv: str | None) -> list[str] | None:
    return [t.strip() for t in csv.split(",") if t.strip()] if csv else None
