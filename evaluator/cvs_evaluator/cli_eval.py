"""`cvs-eval`: score a model on WVS questions and compare it with each country's answers."""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", default="smol", show_default=True, help="Model family name.")
@click.option("--engine", default="torch", show_default=True, help="torch (reference), ort or trt.")
def main(model: str, engine: str) -> None:
    """Evaluate MODEL on ENGINE against the WVS: `cvs-eval --engine trt --model yi34b`."""
    raise click.ClickException("the evaluation is not built yet")
