"""The end-to-end demo: `make demo`, `oasis-sandbox demo` or `python -m oasis.demo`."""

from ._main import add_arguments, add_parser, main, run

__all__ = ["add_arguments", "add_parser", "main", "run"]
