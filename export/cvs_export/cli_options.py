"""Options every export command shares, declared once (`cvs-export`, `build-trt`, `cvs-doctor`).

Kept apart from the command modules so that `cvs_export.doctor` and `cvs_export.cli_trt` share
them without importing a CLI module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def engines_option(
    help_text: str,
    *,
    must_exist: bool = False,
    default: Path | None = Path("engines"),
    dest: str = "engines_root",
) -> Callable[[F], F]:
    """`--engines` (alias `--out`, its old name): the engines root,
    `<root>/<model>/<precision>/`."""
    return click.option(
        "--engines",
        "--out",
        dest,
        type=click.Path(exists=must_exist, file_okay=False, path_type=Path),
        default=default,
        show_default=default is not None,
        help=f"{help_text} (--out: the old name).",
    )


def check_models(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """`--model` checked while the command line is read, so a typo is named in one line (exit
    status 1, with the registry's suggestion) before any work."""
    from cvs_families.registry import UnknownFamilyError, get_family

    for name in value if isinstance(value, tuple) else () if value is None else (value,):
        try:
            get_family(name)
        except UnknownFamilyError as error:
            raise click.ClickException(f"--model: {error}") from None
    return value
