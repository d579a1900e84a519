"""Build a lower-precision engine: export or quantize, validate like fp32, record a verdict.

Why this module exists: fp32 builds (`cvs_export.build.build_engine`) stop on any parity
difference. Every other precision (`cvs_export.precision.RECIPES`) goes through the same part
and chain validation against the PyTorch fp32 model, then is scored on real survey prompts
(text condition, questions never used for calibration) against the same reference; the
distribution figures (`cvs_runtime.comparison`) are judged against the precision's targets and
the `Verdict` lands in the manifest (`validation.verdict`, `validation.passed`). A failing
verdict is not a build failure; the runtime refuses such an engine unless allowed.

The survey prompts come from the evaluator as data (`cvs-eval prompts --out FILE`, read here
from `cvs_runtime.request_file`): the export stage never imports the evaluator. Each recipe
builds itself (`Recipe.build`): `export_float` for fp16/bf16, `quantize_fp32` for the int8
recipes. A recipe onnxruntime's CPU provider cannot run (bf16: `Recipe.cpu_refusal`) is built
and recorded as *not run*; a GPU provider runs it.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cvs_export.parts import Precision
from cvs_export.precision import RECIPES, ExportRecipe, QuantizedRecipe, Verdict, judge, not_run
from cvs_families.checkpoint import LoadedModel
from cvs_families.requests import ScoringRequest
from cvs_families.scores import OptionScores

if TYPE_CHECKING:
    from cvs_export.validate import ValidationReport
    from cvs_runtime.request_file import RequestFile


@dataclass(frozen=True)
class SurveySet:
    """Real survey prompts for one family (written by the evaluator: it owns prompts)."""

    verdict: tuple[ScoringRequest, ...]
    """Prompts the verdict is judged on."""
    calibration: tuple[ScoringRequest, ...]
    """Prompts for calibration and the activation-range check (disjoint questions)."""

    @classmethod
    def from_file(cls, prompts: RequestFile) -> SurveySet:
        """The verdict and calibration sets of a request file (checked by the caller)."""
        from cvs_runtime.request_file import CALIBRATION_SET, VERDICT_SET

        return cls(verdict=prompts.sets[VERDICT_SET], calibration=prompts.sets[CALIBRATION_SET])


@dataclass
class FamilyContext:
    """One family's fp32 model and its reference scores, shared by every precision built."""

    loaded: LoadedModel
    """The checkpoint loaded at fp32: the reference every precision is judged against."""
    survey: SurveySet
    """The survey prompts."""
    _reference: list[OptionScores] = field(default_factory=list)

    def reference_scores(self) -> list[OptionScores]:
        """PyTorch fp32 scores of the verdict prompts (computed once)."""
        if not self._reference:
            from cvs_families.reference import ReferenceScorer

            self._reference = ReferenceScorer(self.loaded).score(self.survey.verdict)
        return self._reference


@dataclass(frozen=True)
class PrecisionJob:
    """Where one lower-precision engine is built, and from what."""

    context: FamilyContext
    """The family's fp32 model and survey prompts."""
    specs: Mapping[str, Any]
    """Part specs by name."""
    out_root: Path
    """Engines root (`<root>/<model>/<precision>/`)."""
    staging: Path
    """The folder being built (renamed into place when recorded)."""
    scratch: Path
    """A folder for a fresh fp32 export to quantize (removed afterwards)."""


@dataclass(frozen=True)
class BuiltParts:
    """What a recipe's build step wrote into the staging folder."""

    files: dict[str, str]
    """Part name → graph file in the staging folder."""
    info: dict[str, Any] = field(default_factory=dict)
    """What to record under the manifest's `export`."""
    checks: dict[str, Any] = field(default_factory=dict)
    """Extra checks for the manifest's `validation` (the fp16 activation range)."""


@dataclass(frozen=True)
class PrecisionBuild:
    """What one lower-precision build produced."""

    folder: Path
    """The finished engine folder."""
    manifest: Any
    """Its EngineManifest."""
    verdict: Verdict
    """The accuracy verdict written into it."""
    lines: tuple[str, ...]
    """Report lines."""


def decoder_prefill_feeds(
    embedding: Any, spec: Any, requests: Sequence[ScoringRequest]
) -> list[dict[str, NDArray[Any]]]:
    """Decoder inputs of each text prompt alone (batch 1, empty cache): calibration samples."""
    from cvs_runtime.chain import empty_cache

    feeds = []
    for request in requests:
        ids = request.input_ids[None, :]  # (1, seq)
        seq = ids.shape[1]
        embeds = embedding.run("embedding", {"input_ids": ids})["inputs_embeds"]  # (1, seq, h)
        feeds.append(
            {
                "inputs_embeds": embeds.astype(np.float32),
                "position_ids": np.arange(seq, dtype=np.int64)[None, :],
                "attention_mask": np.ones((1, seq), dtype=np.int64),
                "logit_index": np.array([[seq - 1]], dtype=np.int64),
                **empty_cache(spec.text_num_layers, 1, spec.text_num_kv_heads, spec.text_head_dim),
            }
        )
    return feeds


def suffix_calibration_feeds(
    parts: Any, spec: Any, requests: Sequence[ScoringRequest]
) -> list[dict[str, NDArray[Any]]]:
    """Suffix-part inputs of each text prompt alone: its first half run through the fp32
    decoder into the shared prefix cache, its second half as the suffix (batch 1)."""
    from cvs_runtime.chain import embed_ids, run_prefix

    feeds = []
    for request in requests:
        ids = request.input_ids
        split = max(1, ids.shape[0] // 2)
        (embeds,) = embed_ids(parts, [ids], pad_token_id=0)  # (seq, hidden)
        cache = run_prefix(parts, spec, embeds[:split])
        tail = embeds[None, split:]  # (1, suffix, hidden)
        width = tail.shape[1]
        feeds.append(
            {
                "inputs_embeds": tail,
                "position_ids": split + np.arange(width, dtype=np.int64)[None, :],
                "suffix_mask": np.ones((1, width), dtype=np.int64),
                "logit_index": np.array([[width - 1]], dtype=np.int64),
                **cache,
            }
        )
    return feeds


def export_float(job: PrecisionJob, recipe: ExportRecipe) -> BuiltParts:
    """Export the fp32-loaded model at `recipe`'s float type (and check fp16's activation range
    on the calibration prompts)."""
    from cvs_export.onnx_export import export_parts

    loaded = job.context.loaded
    result = export_parts(loaded.model, job.specs, job.staging, precision=recipe.name)
    checks: dict[str, Any] = {}
    if recipe.range_check:
        from cvs_export.activation_range import activation_ranges

        prompts = [r.input_ids for r in job.context.survey.calibration]
        checks["activation_range"] = activation_ranges(loaded.model, prompts).to_json()
    return BuiltParts(files={p: e.file for p, e in result.parts.items()}, checks=checks)


def quantize_fp32(job: PrecisionJob, recipe: QuantizedRecipe) -> BuiltParts:
    """Quantize an fp32 export of the family by `recipe` into the staging folder."""
    from cvs_export.quantize import build_int8_folder
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    source, info = _fp32_source(job, recipe)
    files = {p: f"{p}.onnx" for p in job.specs}
    feeds: dict[str, list[dict[str, NDArray[Any]]]] = {}
    calibration = job.context.survey.calibration
    if recipe.needs_calibration:
        fp32 = OrtParts(
            {p: source / f"{p}.onnx" for p in ("embedding", "decoder")}, OrtSessionConfig()
        )
        spec = job.context.loaded.spec
        feeds = {
            "decoder": decoder_prefill_feeds(fp32, spec, calibration),
            "suffix": suffix_calibration_feeds(fp32, spec, calibration),
        }
    quantized = build_int8_folder(source, job.staging, recipe, files, calibration=feeds)
    shutil.rmtree(job.scratch, ignore_errors=True)
    info["quantized_matmuls"] = len(quantized.quantized)
    info["kept_matmuls"] = list(quantized.kept)
    info["calibration_prompts"] = len(calibration) if feeds else 0
    return BuiltParts(files=files, info=info)


def _fp32_source(job: PrecisionJob, recipe: QuantizedRecipe) -> tuple[Path, dict[str, Any]]:
    """An fp32 engine folder to quantize: the built one when it matches, else a fresh export."""
    from cvs_export.onnx_export import export_parts
    from cvs_export.quantize import smoothed_copy
    from cvs_runtime.engine_manifest import ManifestError, verified_engine

    loaded = job.context.loaded
    built = job.out_root / loaded.spec.name / "fp32"
    info: dict[str, Any] = {}
    if recipe.smooth_alpha is None:
        try:
            verified_engine(
                built,
                family=loaded.spec.name,
                precision="fp32",
                checkpoint_fingerprint=loaded.fingerprint,
            )
            info["fp32_source"] = str(built)
            return built, info
        except ManifestError:
            pass
    model = loaded.model
    if recipe.smooth_alpha is not None:
        prompts = [r.input_ids for r in job.context.survey.calibration]
        model, pairs = smoothed_copy(loaded.model, prompts, recipe.smooth_alpha)
        info["smoothed_pairs"] = len(pairs)
        info["smooth_max_scale"] = max(p.max_scale for p in pairs)
    shutil.rmtree(job.scratch, ignore_errors=True)
    export_parts(model, job.specs, job.scratch, precision="fp32")
    info["fp32_source"] = "fresh export" + (" (smoothed)" if recipe.smooth_alpha else "")
    return job.scratch, info


def build_precision_engine(
    context: FamilyContext,
    precision: Precision,
    *,
    out_root: Path,
    echo: Callable[[str], None],
) -> PrecisionBuild:
    """Build, validate and judge one lower-precision engine of `context`'s family."""
    import torch

    from cvs_export.llava_next import part_specs
    from cvs_export.manifest import build_manifest, publish_engine
    from cvs_export.onnx_export import EXPORTER, OPSET
    from cvs_export.scoring_files import write_scoring_files

    recipe = RECIPES[precision]
    if recipe.name == "fp32":
        raise ValueError("fp32 is built by cvs_export.build.build_engine")
    loaded = context.loaded
    name = loaded.spec.name
    folder = out_root / name
    job = PrecisionJob(
        context=context,
        specs=part_specs(loaded.spec.config),
        out_root=out_root,
        staging=folder / f"{precision}.partial",
        scratch=folder / f"{precision}.fp32-source",
    )
    shutil.rmtree(job.staging, ignore_errors=True)
    started = time.perf_counter()
    with torch.no_grad():
        built = recipe.build(job)
    info: dict[str, Any] = {
        "recipe": recipe.description,
        "kept_groups": list(recipe.keep) if isinstance(recipe, QuantizedRecipe) else [],
        **built.info,
        "seconds": round(time.perf_counter() - started, 2),
    }
    verdict, report = _judge(job, recipe.cpu_refusal, built, precision)
    info["folder_bytes_before_manifest"] = sum(
        p.stat().st_size for p in job.staging.iterdir() if p.is_file()
    )
    validation = (report.to_json() if report is not None else {"parts": [], "chain": None}) | {
        "parts_within_tolerance": bool(report.passed) if report is not None else False,
        "passed": verdict.passed,
        "verdict": verdict.to_json(),
        **built.checks,
    }
    if report is not None:
        (job.staging / "validation.txt").write_text(report.table() + "\n" + verdict.line() + "\n")
    write_scoring_files(job.staging, loaded.spec, loaded.tokenizer)
    manifest = build_manifest(
        job.staging,
        family=name,
        checkpoint_fingerprint=loaded.fingerprint,
        precision=precision,
        opset=OPSET,
        exporter=EXPORTER + recipe.exporter_note,
        specs=job.specs,
        part_files=built.files,
        validation=validation,
        export=info,
    )
    final = publish_engine(job.staging, folder / precision, manifest)
    size = sum(f.size for f in manifest.files)
    lines = (
        f"{name} {precision}: engine in {final} ({recipe.description})",
        f"  built in {info['seconds']:.1f}s; folder {size / 2**20:.1f} MiB",
        "  " + verdict.line(),
    )
    for line in lines:
        echo(line)
    return PrecisionBuild(folder=final, manifest=manifest, verdict=verdict, lines=lines)


def _judge(
    job: PrecisionJob, cpu_refusal: str, built: BuiltParts, precision: Precision
) -> tuple[Verdict, ValidationReport | None]:
    """Open the engine on onnxruntime CPU; validate parts and chain; judge the survey figures
    (`cvs_runtime.comparison`) against the precision's targets."""
    from cvs_export.validate import validate_engine
    from cvs_families.reference import pad_token_for
    from cvs_runtime.comparison import compare_scores
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig
    from cvs_runtime.scheduler import score_with_parts

    if cpu_refusal:
        return not_run(precision, cpu_refusal), None
    loaded = job.context.loaded
    engine = OrtParts({p: job.staging / f for p, f in built.files.items()}, OrtSessionConfig())
    report = validate_engine(loaded, engine, job.specs, precision, chain=True)
    got = score_with_parts(
        engine, loaded.spec, job.context.survey.verdict, pad_token_id=pad_token_for(loaded)
    )
    figures = compare_scores(got, job.context.reference_scores())
    overflow = built.checks.get("activation_range", {}).get("overflowing", [])
    verdict = judge(
        precision,
        mean_js=figures.mean_js,
        max_js=figures.max_js,
        top1=figures.top1,
        requests=figures.requests,
        max_logprob_diff=figures.max_logprob_diff,
        parts_within_tolerance=sum(c.passed for c in report.parts),
        parts=len(report.parts),
        all_finite=figures.finite and all(np.isfinite(c.max_abs) for c in report.parts),
        overflowing=[str(r["module"]) for r in overflow],
    )
    return verdict, report
