"""``tailor``: train, evaluate and inspect task packs. Thin: parse, call the library, print. One module per group of
commands (:mod:`~tailorrt.cli.train`, :mod:`~tailorrt.cli.export`, :mod:`~tailorrt.cli.serve`,
:mod:`~tailorrt.cli.measure`), each registering its commands on :data:`~tailorrt.cli.common.app`."""

from __future__ import annotations

import sys

from rich.markup import escape

# isort: off
from tailorrt.cli import train, measure, export, serve  # noqa: F401 - each registers its commands, in --help's order
# isort: on
from tailorrt.cli.common import app, err
from tailorrt.errors import TailorError

__all__ = ["app", "main"]


def main() -> None:
    """Entry point: typed library errors become one line on stderr and their class's exit code (1; 2: a missing
    optional dependency such as TensorRT)."""
    try:
        app()
    except TailorError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
