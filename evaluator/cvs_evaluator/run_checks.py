"""Every mistake in a run's request that can be found before a model or an engine loads.

`check_request` refuses each in one line naming the flag (`RequestError`, a ValueError the CLI
prints as one `Error:` line): the family, precisions, conditions against the family's vision
weights, screening without images, the human source and its file, `$CVS_DATA`, country and
question ids, the image source, that each engine asked for is built, that `--out` is writable.
`cvs-eval` calls it on the parsed command line and `run_pipeline.execute` again first thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cvs_evaluator.run_pipeline import RunRequest


class RequestError(ValueError):
    """A request that cannot be run as asked; the message names the flag to change."""


def check_request(request: RunRequest) -> None:
    """Refuse, in one line naming the flag, every mistake in a `RunRequest` that can be found
    without loading a model or an engine: without this, some were found only after the model
    loaded, and a read-only --out only after the first batch was scored. Side-effect free: the
    --out probe removes what it created. `execute` calls it first, so library callers get the
    same refusals."""
    from cvs_evaluator import scorers
    from cvs_evaluator.countries import UnknownCountry, country
    from cvs_evaluator.evaluate import select_questions
    from cvs_evaluator.questions import load_question_bank
    from cvs_families.paths import check_writable_folder, data_dir
    from cvs_families.registry import UnknownFamilyError, get_family

    try:
        spec = get_family(request.model)
    except UnknownFamilyError as error:
        raise _naming("--model", error) from None
    try:
        scorers.check_precision(request.engine, request.precision)
    except ValueError as error:
        raise _naming("--precision", error) from None
    targets = [(request.engine, request.precision)]
    if request.compare_to not in (None, "none"):
        try:
            targets.append(scorers.parse_compare_to(request.compare_to))
        except ValueError as error:
            raise _naming("--compare-to", error) from None
    images = [c for c in request.conditions if c != "text"]
    if images and not spec.image_informative and not request.include_uninformative_images:
        raise RequestError(
            f"--condition {'/'.join(images)}: {request.model}'s vision tower is random (no "
            "vision weights can be had here), so it carries no information; pass "
            "--include-uninformative-images to score it anyway"
        )
    if request.screen is not None and not images:
        raise RequestError("--screen screens images: it needs an image condition")
    if request.human_source == "goqa" and request.goqa_file is None:
        raise RequestError("--human-source goqa needs --goqa-file FILE (GlobalOpinionQA's CSV)")
    if request.human_source != "goqa" and request.goqa_file is not None:
        raise RequestError("--goqa-file is read only with --human-source goqa")
    data_dir()  # DataDirMissing: one line naming CVS_DATA
    for code in request.countries:
        try:
            country(code)
        except UnknownCountry as error:
            raise _naming("--country", error) from None
    if request.questions:
        try:
            select_questions(load_question_bank(), per_section=None, only=request.questions)
        except ValueError as error:
            raise _naming("--question", error) from None
    if images and request.images != "flags" and not Path(request.images).exists():
        raise RequestError(
            f"--images {request.images}: no such folder or CSV file (give 'flags', a folder "
            "<country>/<category>/<file>, or a Dollar Street CSV)"
        )
    for (engine, precision), flag in zip(targets, ("--engines", "--compare-to"), strict=False):
        _check_engine_built(request, engine, precision, flag)
    check_writable_folder(request.out, "--out", "run folder")


def _check_engine_built(request: RunRequest, engine: str, precision: str, flag: str) -> None:
    """One line with the build command when `engine` (not torch) has no engine to open."""
    from cvs_runtime.engines import engine_folder

    if engine == "torch":
        return
    root = request.engines_root
    folder = engine_folder(root, engine, request.model, precision)
    if (folder / "manifest.json").is_file():
        return
    build = "build-trt" if engine == "trt" else "build"
    asked = f"--engines {root}" if flag == "--engines" else f"--compare-to {engine}/{precision}"
    raise RequestError(
        f"{asked}: no {precision} engine for {request.model} in {folder}: build it with "
        f"`cvs-export {build} --engines {root} --model {request.model} --precision {precision}`"
    )


def _naming(flag: str, error: Exception) -> RequestError:
    """`error` as one line that names `flag` (prefixed unless the message already does)."""
    message = str(error)
    return RequestError(message if flag in message else f"{flag}: {message}")
