"""One benchmark variant in its own process: load, score its workload, report per item.

`python -m cvs_evaluator.bench.variants NAME CONDITION --out FILE …` writes one JSON object:
the variant's timing (scoring only: loading is timed apart), peak and post-load RSS, counted
FLOPs, stage times (engines), and each item's option log-probs by item id, which the
orchestrator (`cvs_evaluator.bench.cli`) compares across variants.

Variants:
- `study-loop`: how the study ran. transformers' `LlavaNextForConditionalGeneration` called as
  `model(**inputs)` one item at a time, the HF processor run on every item (the image
  re-encoded every time), logits at every position (the default), full-vocabulary softmax at
  the last one;
- `torch-reference`: the project's PyTorch reference scorer, batched (no prefix cache);
- `ort-<precision>-nocache`: the runtime with both caches off (vision and prefix redone for every
  suffix batch);
- `ort-<precision>`: the runtime with its image and prefix caches.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Literal

import click
import numpy as np

from cvs_evaluator.bench.workload import (
    CONDITIONS,
    Condition,
    Workload,
    build_workload,
    full_prompt_tokens,
    language_model_size,
)
from cvs_runtime.budgets import Budgets

VARIANT_KINDS = ("study-loop", "torch-reference", "ort")
"""Kinds of variant; `ort` variants are named `ort-<precision>[-nocache]`."""
BENCH_BUDGETS = Budgets(
    image_cache_bytes=256 * 2**20, prefix_cache_bytes=512 * 2**20, activation_bytes=3 * 2**30
)
"""The engine variants' budgets: stated, not taken from the machine, so the memory figure can
be held against them (a 3,050-token smol prefix pass needs ≈ 2.8 GB of activations)."""


def rss_bytes() -> int:
    """Resident set size of this process now (/proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Largest resident set size of this process so far (kernel high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _requests(workload: Workload, items: list[Any], tokenizer: Any, spec: Any) -> list[Any]:
    from cvs_evaluator.prompts import to_request

    return [to_request(item, tokenizer, spec, workload.image) for item in items]


def run_study_loop(workload: Workload, subset: str, threads: int) -> dict[str, Any]:
    """The study's loop: processor + `model(**inputs)` per item, every position's logits."""
    import torch
    from PIL import Image

    from cvs_families.checkpoint import ensure_checkpoint, load_model
    from cvs_families.checkpoint_build import hf_processor
    from cvs_families.registry import get_family

    torch.set_num_threads(threads)
    spec = get_family(workload.items[0].family)
    loaded = load_model(spec, ensure_checkpoint(spec))
    processor = hf_processor(spec, loaded.tokenizer)
    items = workload.chosen("sample")
    requests = _requests(workload, items, loaded.tokenizer, spec)
    picture = None
    if workload.image is not None:
        from cvs_evaluator.bench.workload import bench_picture

        picture = Image.fromarray(bench_picture())
    after_open = rss_bytes()
    size = language_model_size(spec)
    flops = 0.0
    logprobs: dict[str, list[float]] = {}
    started = time.perf_counter()
    for item, request in zip(items, requests, strict=True):
        inputs = processor(
            images=picture, text=item.text, return_tensors="pt", add_special_tokens=False
        )
        expected = _expanded(request, spec)
        got = inputs["input_ids"][0].numpy()
        if not np.array_equal(got, expected):
            raise RuntimeError(
                f"{item.item_id}: the HF processor's tokens differ from the request's "
                f"({got.shape[0]} vs {expected.shape[0]}): the loop would score another prompt"
            )
        with torch.no_grad():
            logits = loaded.model(**inputs).logits  # (1, tokens, vocab): every position
        row = torch.log_softmax(logits[0, -1].double(), dim=-1)
        logprobs[item.item_id] = row[torch.from_numpy(request.option_token_ids)].tolist()
        tokens, attended = full_prompt_tokens(int(got.shape[0]))
        flops += size.flops(tokens, attended, head_positions=tokens)
    seconds = time.perf_counter() - started
    return _result(items, seconds, after_open, flops, logprobs, extra={"subset": subset})


def _expanded(request: Any, spec: Any) -> np.ndarray:
    from cvs_families.reference import expand_image_placeholder

    return expand_image_placeholder(request, spec)


def run_torch_reference(workload: Workload, subset: str, threads: int) -> dict[str, Any]:
    """The PyTorch reference scorer, batched by length bucket, on the items."""
    import torch

    from cvs_families.checkpoint import ensure_checkpoint, load_model
    from cvs_families.reference import ReferenceScorer
    from cvs_families.registry import get_family

    torch.set_num_threads(threads)
    spec = get_family(workload.items[0].family)
    loaded = load_model(spec, ensure_checkpoint(spec))
    items = workload.chosen("sample" if subset == "sample" else "all")
    requests = _requests(workload, items, loaded.tokenizer, spec)
    scorer = ReferenceScorer(loaded)
    after_open = rss_bytes()
    started = time.perf_counter()
    scores = scorer.score(requests)
    seconds = time.perf_counter() - started
    size = language_model_size(spec)
    flops = 0.0
    for request in requests:
        tokens, attended = full_prompt_tokens(int(scorer.expanded_length(request)))
        flops += size.flops(tokens, attended, head_positions=1)
    logprobs = {i.item_id: s.option_logprobs.tolist() for i, s in zip(items, scores, strict=True)}
    return _result(items, seconds, after_open, flops, logprobs, extra={"subset": subset})


def run_engine(
    workload: Workload,
    subset: str,
    threads: int,
    *,
    engines: Path,
    precision: str,
    caches: bool,
    budget: Budgets,
) -> dict[str, Any]:
    """The runtime on the onnxruntime CPU engine under `budget`, caches on or off."""
    from cvs_families.checkpoint import (
        checkpoint_fingerprint,
        ensure_checkpoint,
        load_tokenizer,
        pad_token_id,
    )
    from cvs_families.registry import get_family
    from cvs_runtime.budgets import Budgets
    from cvs_runtime.chain import embed_ids, run_prefix, run_suffixes
    from cvs_runtime.engines import EngineScorer, engine_folder
    from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig
    from cvs_runtime.scheduler import StageTimes

    spec = get_family(workload.items[0].family)
    checkpoint = ensure_checkpoint(spec)
    tokenizer = load_tokenizer(spec, checkpoint)
    items = workload.chosen("sample" if subset == "sample" else "all")
    requests = _requests(workload, items, tokenizer, spec)
    folder = engine_folder(engines, "ort", spec.name, precision)
    parts = OrtParts.open(
        folder,
        family=spec.name,
        precision=precision,
        checkpoint_fingerprint=checkpoint_fingerprint(checkpoint),
        allow_failed_verdict=True,  # the bench reports accuracy itself
        config=OrtSessionConfig(intra_op_threads=threads),
    )
    budgets = Budgets(
        image_cache_bytes=budget.image_cache_bytes if caches else 0,
        prefix_cache_bytes=budget.prefix_cache_bytes if caches else 0,
        activation_bytes=budget.activation_bytes,
        max_batch=64,
    )
    scorer = EngineScorer(parts, spec, pad_token_id=pad_token_id(spec, tokenizer), budgets=budgets)
    # Opened and ready: one 8-token prefix and suffix page the weights in (not the workload's
    # memory), then the workload's own time and memory are measured from here.
    (ids,) = embed_ids(parts, [requests[0].input_ids[:16]], pad_token_id=0)
    run_suffixes(parts, run_prefix(parts, spec, ids[:8]), 8, [ids[8:]], 8)
    after_open = rss_bytes()
    times = scorer.scheduler.times = StageTimes()
    started = time.perf_counter()
    scores = scorer.scheduler.score(requests)
    seconds = time.perf_counter() - started
    size = language_model_size(spec)
    computed = times.tokens["prefix"] + times.tokens["suffix"]
    attended = times.attended["prefix"] + times.attended["suffix"]
    flops = size.flops(computed, attended, head_positions=len(requests))
    suffix_flops = size.flops(
        times.tokens["suffix"], times.attended["suffix"], head_positions=len(requests)
    )
    logprobs = {i.item_id: s.option_logprobs.tolist() for i, s in zip(items, scores, strict=True)}
    suffix_seconds = times.seconds["suffix"]
    return _result(
        items,
        seconds,
        after_open,
        flops,
        logprobs,
        extra={
            "subset": subset,
            "stage_times": times.to_json(),
            "suffix_gflops": suffix_flops / suffix_seconds / 1e9 if suffix_seconds else None,
            "budgets": {
                "image_cache_bytes": budgets.image_cache_bytes,
                "prefix_cache_bytes": budgets.prefix_cache_bytes,
                "activation_bytes": budgets.activation_bytes,
            },
            "cache_peaks": {
                "image": scorer.scheduler.image_cache.stats.peak_bytes,
                "prefix": scorer.scheduler.prefix_cache.stats.peak_bytes,
            },
        },
    )


def _result(
    items: list[Any],
    seconds: float,
    after_open: int,
    flops: float,
    logprobs: dict[str, list[float]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "items": len(items),
        "seconds": seconds,
        "items_per_s": len(items) / seconds if seconds > 0 else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_open_bytes": after_open,
        "flops": flops,
        "gflops_achieved": flops / seconds / 1e9 if seconds > 0 else None,
        "logprobs": logprobs,
        **extra,
    }


def parse_engine_variant(name: str) -> tuple[str, bool]:
    """`ort-<precision>[-nocache]` → (precision, caches on)."""
    if not name.startswith("ort-"):
        raise ValueError(f"not an engine variant: {name!r}")
    rest = name.removeprefix("ort-")
    caches = not rest.endswith("-nocache")
    return rest.removesuffix("-nocache"), caches


@click.command()
@click.argument("name")
@click.argument("condition", type=click.Choice(CONDITIONS))
@click.option("--model", default="smol", show_default=True)
@click.option("--subset", type=click.Choice(["all", "sample"]), default="all", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--engines", type=click.Path(path_type=Path), default=Path("engines"))
@click.option("--image-cache-bytes", type=int, default=BENCH_BUDGETS.image_cache_bytes)
@click.option("--prefix-cache-bytes", type=int, default=BENCH_BUDGETS.prefix_cache_bytes)
@click.option("--activation-bytes", type=int, default=BENCH_BUDGETS.activation_bytes)
@click.option("--limit", type=int, default=None, help="Only the first N items (smoke tests).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def main(
    name: str,
    condition: Literal["text", "image"],
    model: str,
    subset: str,
    threads: int,
    engines: Path,
    image_cache_bytes: int,
    prefix_cache_bytes: int,
    activation_bytes: int,
    limit: int | None,
    out: Path,
) -> None:
    """Run one variant on one condition and write its JSON result to OUT."""
    from cvs_families.checkpoint import ensure_checkpoint, load_tokenizer
    from cvs_families.registry import get_family

    spec = get_family(model)
    tokenizer = load_tokenizer(spec, ensure_checkpoint(spec))
    cond: Condition = condition
    workload = build_workload(cond, spec, tokenizer)
    if limit is not None:
        workload = workload.limited(limit)
    if name == "study-loop":
        result = run_study_loop(workload, "sample", threads)
    elif name == "torch-reference":
        result = run_torch_reference(workload, subset, threads)
    else:
        precision, caches = parse_engine_variant(name)
        result = run_engine(
            workload,
            subset,
            threads,
            engines=engines,
            precision=precision,
            caches=caches,
            budget=Budgets(image_cache_bytes, prefix_cache_bytes, activation_bytes),
        )
    result.update(name=name, condition=condition, model=model, threads=threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    partial.rename(out)


if __name__ == "__main__":
    main()
