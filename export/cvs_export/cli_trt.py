"""`cvs-export build-trt`: TensorRT plans from a model's validated ONNX engine.

The step between `cvs-export build` and `cvs-eval --engine trt`: it reads the ONNX engine in
`<out>/<model>/<source precision>/`, checks every node against TensorRT's operator list, builds
one plan per part with optimisation profiles from the part specs, validates the plans against
the PyTorch reference and records them in `<out>/<model>/trt-<precision>/manifest.json`.
TensorRT is imported only when a build starts; without it the command says which extra to
install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from cvs_export.cli_options import check_models, engines_option


@click.command(name="build-trt", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    required=True,
    callback=check_models,
    help="Family name (its ONNX engine must exist).",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Local checkpoint folder (real families), for the parity check.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    default="fp16",
    show_default=True,
    help="Builder precision: fp16/bf16/fp32 from the fp32 ONNX engine, int8 from int8-qdq.",
)
@engines_option(
    "Engines root: reads <root>/<model>/<source>/, writes <root>/<model>/trt-<precision>/",
    dest="out",
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TensorRT timing cache file, read if present and written back.",
)
@click.option(
    "--workspace-gib",
    type=click.FloatRange(min=0, min_open=True),
    help="TensorRT workspace limit (default: device).",
)
@click.option(
    "--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device."
)
def build_trt(
    model: str,
    weights: Path | None,
    precision: str,
    out: Path,
    timing_cache: Path | None,
    workspace_gib: float | None,
    device: int,
) -> None:
    """Build and validate TensorRT plans of MODEL's ONNX engine (needs an NVIDIA GPU).

    \b
    Example (a GPU server with `pip install 'cvs-eval[trt]'`):
      cvs-export build --model yi34b --weights /models/llava-v1.6-34b-hf
      cvs-export build-trt --model yi34b --weights /models/llava-v1.6-34b-hf --precision fp16
      cvs-eval --engine trt --precision fp16 --model yi34b --weights /models/llava-v1.6-34b-hf
    """
    spec, source = _checked_source(model, precision, out)  # before torch or a checkpoint loads
    from cvs_export.llava_next import part_specs
    from cvs_export.trt_build import TrtBuildError, TrtBuildOptions, build_trt_engine
    from cvs_export.trt_ops import UnsupportedOpsError
    from cvs_export.validate import ParityError
    from cvs_families.checkpoint import CheckpointError, ensure_checkpoint, load_model
    from cvs_runtime.engine_manifest import ManifestError
    from cvs_runtime.trt_backend import TensorRTUnavailable

    try:
        loaded = load_model(spec, ensure_checkpoint(spec, weights))
        options = TrtBuildOptions(
            precision=cast(Any, precision),
            timing_cache=timing_cache,
            workspace_bytes=None if workspace_gib is None else int(workspace_gib * 2**30),
            device=device,
        )
        summary = build_trt_engine(
            source, part_specs(spec.config), out, options, loaded, echo=click.echo
        )
    except (CheckpointError, ManifestError, TensorRTUnavailable) as error:
        raise click.ClickException(str(error)) from error
    except (TrtBuildError, UnsupportedOpsError, ParityError) as error:
        raise click.ClickException(f"TensorRT build failed: {error}") from error
    click.echo(f"{spec.name} trt-{precision}: engine in {summary.folder}")


def _checked_source(model: str, precision: str, out: Path) -> tuple[Any, Path]:
    """(family spec, the ONNX engine folder the plans are built from), or one line naming the
    flag: no source engine under --engines, or an engines root the plans cannot be written to
    (--model was checked while parsing). All cheap: nothing here imports torch or TensorRT."""
    from cvs_export.trt_build import SOURCE_PRECISION
    from cvs_families.paths import check_writable_folder
    from cvs_families.registry import get_family

    spec = get_family(model)
    source = out / spec.name / SOURCE_PRECISION[cast(Any, precision)]
    if not (source / "manifest.json").is_file():
        raise click.ClickException(
            f"--engines {out}: no ONNX engine in {source}: build it first with `cvs-export build "
            f"--model {spec.name} --precision {source.name} --engines {out}`"
        )
    check_writable_folder(out / spec.name, "--engines", "engines root")
    return spec, source
