"""`cvs-export`: plan, build and verify engines.

- `plan`: parameters, parts, shapes, file sizes and export peak memory of a family at full size,
  on the meta device (no weights needed).
- `build`: checkpoint → ONNX parts → parity validation against PyTorch → manifest, and lower
  precisions judged on survey prompts (`--prompts FILE`, written by `cvs-eval prompts`); the
  work is `cvs_export.build`'s.
- `build-trt`: TensorRT plans from a validated ONNX engine (`cvs_export.cli_trt`).
- `add-scoring-files`, `verify`: bring an older engine folder up to date; re-hash one.
- `sessions`: memory of two processes over one engine, prepacking on and off.

Each command parses its options and calls one library function; a library error is printed as
one line (exit status 1). Torch is imported only by `plan` and `build`.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import click

from cvs_export.cli_options import check_models, engines_option
from cvs_export.cli_trt import build_trt
from cvs_export.parts import PRECISIONS, Precision

DEFAULT_PLAN_MODELS = ("vicuna13b", "yi34b", "qwen72b")
"""What `cvs-export plan` plans without `--model`."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Checkpoint → ONNX parts → engines, validated against the PyTorch reference."""


main.add_command(build_trt)

_precision = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Engine precision.",
)


@main.command()
@click.option(
    "--model", "models", multiple=True, callback=check_models, help="Family name (repeatable)."
)
@_precision
def plan(models: tuple[str, ...], precision: str) -> None:
    """Plan engines on the meta device: parameters, parts, shapes, sizes, export peak memory."""
    from cvs_export.onnx_export import ExportError
    from cvs_export.planner import plan_export
    from cvs_families.registry import get_family

    for name in models or DEFAULT_PLAN_MODELS:
        try:
            table = plan_export(name, get_family(name).config, cast(Precision, precision)).table()
        except ExportError as error:
            raise click.ClickException(str(error)) from None
        click.echo(table + "\n")


@main.command()
@click.option(
    "--model",
    "models",
    multiple=True,
    callback=check_models,
    help="Family name (repeatable); default tiny-vicuna, tiny-yi, tiny-qwen, smol.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local checkpoint folder (real families); only with one --model.",
)
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(PRECISIONS),
    multiple=True,
    help="Engine precision (repeatable; default fp32). Below fp32 the build records an "
    "accuracy verdict instead of failing, judged on --prompts.",
)
@click.option(
    "--all-precisions", is_flag=True, help=f"Build every precision: {', '.join(PRECISIONS)}."
)
@click.option(
    "--prompts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="Survey prompts for precisions below fp32, one file per model (repeatable): write "
    "them with `cvs-eval prompts --model M --out FILE`.",
)
@engines_option("Engines root: each engine goes to <root>/<model>/<precision>/", dest="out")
@click.option("--no-chain", is_flag=True, help="Skip the end-to-end chain check (parts only).")
@click.option(
    "--if-missing",
    is_flag=True,
    help="Build only engines that are missing or out of date (another checkpoint, a changed "
    "file, or a part this version adds); leave valid ones as they are.",
)
def build(
    models: tuple[str, ...],
    weights: Path | None,
    precisions: tuple[str, ...],
    all_precisions: bool,
    prompts: tuple[Path, ...],
    out: Path,
    no_chain: bool,
    if_missing: bool,
) -> None:
    """Export, validate and record engines (fp32 fails with a parity table on any difference;
    lower precisions get a verdict in their manifest).

    \b
    Example (fp32 and the int8 recipe `make engines` builds):
      cvs-eval prompts --model smol --out prompts-smol.npz
      cvs-export build --model smol --precision fp32 --precision int8-wo \\
        --prompts prompts-smol.npz
    """
    from cvs_export import build as builder

    if weights is not None and len(models) != 1:
        raise click.UsageError("--weights needs exactly one --model")
    settings = builder.BuildSettings(
        models=models or builder.DEFAULT_BUILD_MODELS,
        weights=weights,
        precisions=builder.requested_precisions(precisions, all_precisions),
        out=out,
        chain=not no_chain,
        if_missing=if_missing,
        prompts=prompts,
    )
    try:
        builder.build_engines(settings, echo=click.echo)
    except builder.BuildError as error:
        raise click.ClickException(str(error)) from None


@main.command(name="add-scoring-files")
@click.option("--model", required=True, callback=check_models, help="Family name.")
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(PRECISIONS),
    multiple=True,
    help="Engine precision (repeatable); default every engine of MODEL under the root.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local checkpoint folder the engines were built from (real families).",
)
@engines_option("Engines root (<root>/<model>/<precision>/)", must_exist=True)
def add_scoring_files_command(
    model: str, precisions: tuple[str, ...], weights: Path | None, engines_root: Path
) -> None:
    """Add the tokenizer, chat template and family facts to engines built before engines carried
    them, and record them in each manifest; nothing is re-exported. Needs the checkpoint the
    engines were built from (its fingerprint must match)."""
    from cvs_export.scoring_files import ScoringFilesError, add_scoring_files
    from cvs_families.checkpoint import CheckpointError
    from cvs_families.registry import get_family
    from cvs_runtime.engine_manifest import ManifestError

    folders = [engines_root / model / p for p in precisions] or sorted(
        p.parent for p in (engines_root / model).glob("*/manifest.json")
    )
    if not folders:
        raise click.ClickException(f"no engines of {model} under {engines_root}")
    for folder in folders:
        try:
            added = add_scoring_files(folder, get_family(model), weights)
        except (ManifestError, CheckpointError, ScoringFilesError) as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"{folder}: added {', '.join(added)}; manifest updated")


@main.command()
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--model",
    "models",
    multiple=True,
    callback=check_models,
    help="Verify <root>/<model>/<precision>/.",
)
@_precision
@engines_option("Engines root, for --model", dest="out")
def verify(folders: tuple[Path, ...], models: tuple[str, ...], precision: str, out: Path) -> None:
    """Re-hash every file of engines against their manifests and check each manifest's own
    hash; seal a manifest written before manifests carried one (only when every file matches)."""
    from cvs_export.manifest import verify_engine
    from cvs_runtime.engine_manifest import ManifestError

    targets = [*folders, *(out / name / precision for name in models)]
    if not targets:
        raise click.UsageError("name engine folders or --model")
    for folder in targets:
        try:
            result = verify_engine(folder)
        except ManifestError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"{folder}: {result.line()}")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Prompts per decoder run.",
)
@click.option(
    "--tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Tokens per prompt."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="onnxruntime threads per session.",
)
def sessions(folder: Path, batch: int, tokens: int, threads: int) -> None:
    """Two processes over one engine: resident memory (RSS/PSS/USS) and decoder time, with
    weight prepacking on (private copies) and off (shared pages)."""
    from cvs_export.sessions import measure_sessions

    click.echo(
        f"{'prepacking':<12} {'process':<8} {'load s':>7} {'run s':>7} "
        f"{'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8}"
    )
    for row in measure_sessions(folder, batch=batch, tokens=tokens, threads=threads):
        click.echo(
            f"{'off' if row.share_weight_pages else 'on':<12} {row.index:<8} {row.load_s:>7.2f} "
            f"{row.run_s:>7.3f} {row.rss >> 20:>8} {row.pss >> 20:>8} {row.uss >> 20:>8}"
        )


@main.command(name="session-worker", hidden=True)
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), required=True)
@click.option("--tokens", type=click.IntRange(min=1), required=True)
@click.option("--threads", type=click.IntRange(min=1), required=True)
@click.option("--share", is_flag=True)
def session_worker(folder: Path, batch: int, tokens: int, threads: int, share: bool) -> None:
    """Open the engine, time a decoder prefill, report, then hold until stdin closes."""
    import json
    import sys

    from cvs_export.sessions import time_decoder

    report = time_decoder(folder, batch=batch, tokens=tokens, threads=threads, share=share)
    print(json.dumps(report), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
