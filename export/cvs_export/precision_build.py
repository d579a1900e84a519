"""Build a lower-precision engine: export or quantize, validate like fp32, record a verdict.

Why this module exists: fp32 builds (`cvs_export.cli.build_engine`) stop on any parity
difference. Every other precision (`cvs_export.precision.RECIPES`) goes through the same part
and chain validation against the PyTorch fp32 model, then is scored on real survey prompts
(text condition, questions never used for calibration) against the same reference; the
distribution figures are judged against the precision's targets and the `Verdict` lands in
the manifest (`validation.verdict`, `validation.passed`). A failing verdict is not a build
failure; the runtime refuses such an engine unless allowed.

- fp16/bf16: the fp32-loaded model exported through a float16/bfloat16 meta twin (weights cast
  slice by slice while written). fp16 builds also run the activation-range check on the survey
  prompts (`cvs_export.activation_range`): an activation past 65,504 fails the verdict.
- bf16: onnxruntime's CPU provider has no bf16 MatMul/Add/Mul kernels (session creation fails
  with NOT_IMPLEMENTED), so here the engine is built and recorded as *not run*; a GPU provider
  (CUDA, TensorRT) runs it.
- int8 recipes: an fp32 export (the built `fp32/` engine when it matches the checkpoint, else a
  fresh one; SmoothQuant always re-exports a smoothed copy) is quantized by
  `cvs_export.quantize`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cvs_export.parts import Precision
from cvs_export.precision import RECIPES, Recipe, Verdict, judge, not_run
from cvs_families.checkpoint import LoadedModel
from cvs_runtime.requests import ScoringRequest
from cvs_runtime.scores import OptionScores

VERDICT_REQUESTS = 96
"""Survey prompts each verdict is judged on (one half of the value questions)."""
CALIBRATION_REQUESTS = 32
"""Survey prompts for Q/DQ calibration, SmoothQuant and the fp16 range check (the other half)."""


@dataclass(frozen=True)
class SurveySet:
    """Real survey prompts for one family (built by the evaluator: it owns prompts)."""

    verdict: tuple[ScoringRequest, ...]
    """Prompts the verdict is judged on."""
    calibration: tuple[ScoringRequest, ...]
    """Prompts for calibration and the activation-range check (disjoint questions)."""


SurveySource = Callable[[Any, Any], SurveySet]
"""(family spec, tokenizer) → SurveySet."""


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
class DistributionFigures:
    """Option-distribution agreement of an engine with the reference over many requests."""

    requests: int
    """Requests compared."""
    mean_js: float
    """Mean Jensen–Shannon distance (natural log) between option distributions."""
    max_js: float
    """Largest such distance."""
    top1: float
    """Share of requests whose most likely option agrees."""
    max_logprob_diff: float
    """Largest |Δ option log-prob|."""
    finite: bool
    """Every engine log-prob is finite."""


def distribution_figures(
    engine: Sequence[OptionScores], reference: Sequence[OptionScores]
) -> DistributionFigures:
    """Mean/max JS distance, top-1 agreement and max |Δ log-prob| of two score lists."""
    from cvs_export.validate import js_distance

    if not engine or len(engine) != len(reference):
        raise ValueError(f"need equal, non-empty score lists ({len(engine)} vs {len(reference)})")
    pairs = list(zip(engine, reference, strict=True))
    js = np.array([js_distance(e.distribution, r.distribution) for e, r in pairs])
    diffs = np.concatenate([e.option_logprobs - r.option_logprobs for e, r in pairs])
    finite = bool(np.all(np.isfinite(diffs)) and np.all(np.isfinite(js)))
    agree = [
        int(np.argmax(e.option_logprobs)) == int(np.argmax(r.option_logprobs)) for e, r in pairs
    ]
    return DistributionFigures(
        requests=len(pairs),
        mean_js=float(np.mean(js)) if finite else float("nan"),
        max_js=float(np.max(js)) if finite else float("nan"),
        top1=float(np.mean(agree)),
        max_logprob_diff=float(np.max(np.abs(diffs))) if finite else float("inf"),
        finite=finite,
    )


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


def _fp32_source(
    context: FamilyContext, recipe: Recipe, out_root: Path, scratch: Path, specs: Mapping[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """An fp32 engine folder to quantize: the built one when it matches, else a fresh export."""
    from cvs_export.onnx_export import export_parts
    from cvs_export.quantize import smoothed_copy
    from cvs_runtime.engine_manifest import ManifestError, check_engine

    loaded = context.loaded
    built = out_root / loaded.spec.name / "fp32"
    info: dict[str, Any] = {}
    if recipe.smooth_alpha is None:
        try:
            check_engine(
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
        prompts = [r.input_ids for r in context.survey.calibration]
        model, pairs = smoothed_copy(loaded.model, prompts, recipe.smooth_alpha)
        info["smoothed_pairs"] = len(pairs)
        info["smooth_max_scale"] = max(p.max_scale for p in pairs)
    shutil.rmtree(scratch, ignore_errors=True)
    export_parts(model, specs, scratch, precision="fp32")
    info["fp32_source"] = "fresh export" + (" (smoothed)" if recipe.smooth_alpha else "")
    return scratch, info


def build_precision_engine(
    context: FamilyContext,
    precision: Precision,
    *,
    out_root: Path,
    echo: Callable[[str], None],
) -> PrecisionBuild:
    """Build, validate and judge one lower-precision engine of `context`'s family."""
    import torch

    from cvs_export.activation_range import activation_ranges
    from cvs_export.llava_next import part_specs
    from cvs_export.manifest import build_manifest, write_manifest
    from cvs_export.onnx_export import EXPORTER, OPSET, export_parts
    from cvs_export.quantize import build_int8_folder
    from cvs_export.scoring_files import write_scoring_files
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig

    recipe = RECIPES[precision]
    if recipe.name == "fp32":
        raise ValueError("fp32 is built by cvs_export.cli.build_engine")
    loaded = context.loaded
    name = loaded.spec.name
    specs = part_specs(loaded.spec.config)
    final = out_root / name / precision
    staging = out_root / name / f"{precision}.partial"
    scratch = out_root / name / f"{precision}.fp32-source"
    shutil.rmtree(staging, ignore_errors=True)
    info: dict[str, Any] = {"recipe": recipe.description, "kept_groups": list(recipe.keep)}
    extra: dict[str, Any] = {}
    started = time.perf_counter()
    with torch.no_grad():
        if recipe.method == "export":
            result = export_parts(loaded.model, specs, staging, precision=precision)
            files = {p: e.file for p, e in result.parts.items()}
        else:
            source, source_info = _fp32_source(context, recipe, out_root, scratch, specs)
            info.update(source_info)
            files = {p: f"{p}.onnx" for p in specs}
            feeds: dict[str, list[dict[str, NDArray[Any]]]] = {}
            if recipe.method == "qdq":
                fp32 = OrtParts(
                    {p: source / f"{p}.onnx" for p in ("embedding", "decoder")}, OrtSessionConfig()
                )
                calibration = context.survey.calibration
                feeds = {
                    "decoder": decoder_prefill_feeds(fp32, loaded.spec, calibration),
                    "suffix": suffix_calibration_feeds(fp32, loaded.spec, calibration),
                }
            quantized = build_int8_folder(source, staging, recipe, files, calibration=feeds)
            shutil.rmtree(scratch, ignore_errors=True)
            info["quantized_matmuls"] = len(quantized.quantized)
            info["kept_matmuls"] = list(quantized.kept)
            info["calibration_prompts"] = len(context.survey.calibration) if feeds else 0
        if precision == "fp16":
            ranges = activation_ranges(
                loaded.model, [r.input_ids for r in context.survey.calibration]
            )
            extra["activation_range"] = ranges.to_json()
    info["seconds"] = round(time.perf_counter() - started, 2)
    verdict, report = _judge(context, staging, files, specs, precision, extra)
    info["folder_bytes_before_manifest"] = sum(
        p.stat().st_size for p in staging.iterdir() if p.is_file()
    )
    validation = (report.to_json() if report is not None else {"parts": [], "chain": None}) | {
        "parts_within_tolerance": bool(report.passed) if report is not None else False,
        "passed": verdict.passed,
        "verdict": verdict.to_json(),
        **extra,
    }
    if report is not None:
        (staging / "validation.txt").write_text(report.table() + "\n" + verdict.line() + "\n")
    write_scoring_files(staging, loaded.spec, loaded.tokenizer)
    manifest = build_manifest(
        staging,
        family=name,
        checkpoint_fingerprint=loaded.fingerprint,
        precision=precision,
        opset=OPSET,
        exporter=EXPORTER + ("" if recipe.method == "export" else " + onnxruntime.quantization"),
        specs=specs,
        part_files=files,
        validation=validation,
        export=info,
    )
    write_manifest(staging, manifest)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
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
    context: FamilyContext,
    staging: Path,
    files: Mapping[str, str],
    specs: Mapping[str, Any],
    precision: Precision,
    extra: Mapping[str, Any],
) -> tuple[Verdict, Any]:
    """Open the engine on onnxruntime CPU; validate parts and chain; judge the survey figures."""
    from cvs_export.validate import validate_engine
    from cvs_families.reference import pad_token_for
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig
    from cvs_runtime.scheduler import score_with_parts

    loaded = context.loaded
    refusals: list[str] = []
    for part, file in files.items():
        try:
            OrtParts({part: staging / file}, OrtSessionConfig())
        except Exception as error:  # onnxruntime raises its own classes (NotImplemented, Fail)
            first = str(error).splitlines()[0]
            reason = first.split(" failed:", 1)[-1].split("] : ", 2)[-1]
            refusals.append(f"{part}: {reason[:240]}")
    if refusals:
        return not_run(precision, "onnxruntime CPU refuses " + " | ".join(refusals)), None
    engine = OrtParts({p: staging / f for p, f in files.items()}, OrtSessionConfig())
    report = validate_engine(loaded, engine, specs, precision, chain=True)
    got = score_with_parts(
        engine, loaded.spec, context.survey.verdict, pad_token_id=pad_token_for(loaded)
    )
    figures = distribution_figures(got, context.reference_scores())
    overflow = extra.get("activation_range", {}).get("overflowing", [])
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
