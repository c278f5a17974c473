"""Pieces shared by the CLI's commands: consoles, the --input-shape option, model arguments."""

from __future__ import annotations

import sys

import click
from rich.console import Console

# Piped output (CI logs, files) would otherwise wrap at 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False)


def shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    from mmopt.ir import parse_shape_option

    return dict(parse_shape_option(v) for v in values)


def model_path(path: str) -> str:
    """Accept ``zoo:NAME`` for a built-in example model; otherwise a file path."""
    if path.startswith("zoo:"):
        from mmopt.zoo import zoo_model

        return zoo_model(path[4:])
    return path


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
    help="Fix an input's shape (repeatable), e.g. --input-shape x:1,3,224,224. A symbolic leading "
         "(batch) dim defaults to 1.")
