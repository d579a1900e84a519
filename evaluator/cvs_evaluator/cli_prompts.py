"""`cvs-eval prompts`: write the survey prompts a lower-precision build needs, as a file.

`cvs-export build --precision int8-wo --prompts FILE` reads what this writes
(`cvs_evaluator.prompt_requests`); `make engines` runs both. Registered in `cvs-eval`'s group
(`cvs_evaluator.cli_eval`).
"""

from __future__ import annotations

from pathlib import Path

import click

from cvs_evaluator.prompt_requests import CALIBRATION_REQUESTS, VERDICT_REQUESTS


@click.command(name="prompts", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", required=True, help="Family name whose tokenizer makes the prompts.")
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local checkpoint folder (real families): the engines will be built from it.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The request file to write (.npz), e.g. engines/smol/prompts.npz.",
)
@click.option(
    "--verdict",
    type=click.IntRange(min=1),
    default=VERDICT_REQUESTS,
    show_default=True,
    help="Prompts each lower precision's verdict is judged on.",
)
@click.option(
    "--calibration",
    type=click.IntRange(min=1),
    default=CALIBRATION_REQUESTS,
    show_default=True,
    help="Prompts for calibration (questions the verdict never sees).",
)
def prompts(model: str, weights: Path | None, out: Path, verdict: int, calibration: int) -> None:
    """Write MODEL's survey prompts (text condition, study countries) for `cvs-export build
    --prompts`: a verdict set and a calibration set over disjoint questions.

    \b
    Example:
      cvs-eval prompts --model smol --out engines/smol/prompts.npz
      cvs-export build --model smol --precision int8-wo --prompts engines/smol/prompts.npz
    """
    from cvs_evaluator.prompt_requests import write_precision_prompts
    from cvs_families.checkpoint_facts import CheckpointError
    from cvs_families.paths import DataDirMissing, check_writable_folder
    from cvs_families.registry import UnknownFamilyError, get_family

    try:
        get_family(model)
    except UnknownFamilyError as error:
        raise click.BadParameter(str(error), param_hint="--model") from None
    check_writable_folder(out.parent, "--out", "folder for the request file")
    try:
        written = write_precision_prompts(
            model, out, weights=weights, verdict=verdict, calibration=calibration
        )
    except (CheckpointError, DataDirMissing) as error:
        raise click.ClickException(str(error)) from None
    from cvs_runtime.request_file import CALIBRATION_SET, VERDICT_SET, read_request_file

    held = read_request_file(written).sets
    click.echo(
        f"{written}: {len(held[VERDICT_SET])} verdict and {len(held[CALIBRATION_SET])} "
        f"calibration prompts of {model}"
    )
