"""The GPU benchmark: the study's one-forward-per-question loop against prefix reuse, in PyTorch.

Why this module exists: `make bench` measures the CPU engines; the question a GPU owner asks is
different — how much of the study's cost on an accelerator was the loop itself? This script
answers it for the real models' sizes without their checkpoints: the timing of a forward pass
does not depend on the weights' values, so each family's `LlavaNextForConditionalGeneration` is
built from the config in the repository with seeded random weights, directly on the device in
the chosen dtype. Run it by hand where a GPU is available (never in CI):

    python -m cvs_evaluator.bench.gpu --models smol yi34b --device cuda --dtype fp16

`--device cpu` with small sizes is the smoke mode the tests run.

What is timed (the language model only: image positions are random vectors scaled like the
token embeddings; the vision tower and projector are not run):
- *study loop*: per question, one forward over prefix + suffix at batch 1, no cache, logits at
  every position (`model(**inputs)`'s default), as the study ran;
- *prefix reuse*: the prefix once with a cache, then the suffixes in batches against that one
  batch-1 cache through the project's shared-prefix wrapper (`part_module(model, "suffix")`).
  Its seconds per item include the prefix, spread over the questions.
On the first batch both paths' last-position log-softmax are compared (max |Δ|): an exactness
check of the shared-prefix path at fp32, a precision figure at fp16/bf16.

FLOPs are counted with `cvs_evaluator.bench.workload.LanguageModelSize` (the formula `make
bench` uses): 2 × non-embedding parameters × tokens + 4 × layers × heads × head dim × Σ
attended context + 2 × hidden × vocab per position with logits.
"""

from __future__ import annotations

import argparse
import gc
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_evaluator.bench.machine import cpu_model
from cvs_evaluator.bench.workload import LanguageModelSize, language_model_size
from cvs_evaluator.durable import write_json

if TYPE_CHECKING:
    import torch

DTYPES: dict[str, str] = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
"""`--dtype` choices → torch dtype names."""
SCOPE = (
    "language model only: image positions are random vectors scaled like the token embeddings "
    "(the vision tower and projector are not run); seeded random weights (timing does not "
    "depend on their values)"
)
"""What the timings cover, written into the results and printed."""
GIB = 2**30


@dataclass(frozen=True)
class GpuBenchSettings:
    """The command line, parsed."""

    models: tuple[str, ...]
    """Family names (`cvs_families.registry`), benchmarked one after the other."""
    device: str
    """`cuda` (the benchmark) or `cpu` (the smoke mode)."""
    dtype: str
    """fp16, bf16 or fp32."""
    image_tokens: int
    """Image positions in the prefix (2,928: five anyres tiles of the real models)."""
    text_prefix_tokens: int
    """Text positions in the prefix (system prompt, persona, instructions)."""
    questions: int
    """Suffixes (items) scored against the one prefix."""
    suffix_tokens: int
    """Tokens per suffix."""
    batch: int
    """Suffixes per batch under prefix reuse."""
    out: Path
    """Where the JSON results go (written atomically)."""
    threads: int | None
    """torch intra-op threads (CPU); None keeps torch's default."""

    @property
    def prefix_tokens(self) -> int:
        """Positions the prefix holds: image then text."""
        return self.image_tokens + self.text_prefix_tokens


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> GpuBenchSettings:
    """Parse the command line (argparse: `--models smol yi34b` takes several values)."""
    parser = argparse.ArgumentParser(
        prog="python -m cvs_evaluator.bench.gpu",
        description="Study loop vs prefix reuse in PyTorch on a GPU, at the real models' "
        "sizes with random weights. --device cpu with small sizes is a smoke test.",
    )
    parser.add_argument("--models", nargs="+", default=["smol", "yi34b"], help="families")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    parser.add_argument("--image-tokens", type=_positive, default=2928)
    parser.add_argument("--text-prefix-tokens", type=_positive, default=90)
    parser.add_argument("--questions", type=_positive, default=24)
    parser.add_argument("--suffix-tokens", type=_positive, default=126)
    parser.add_argument("--batch", type=_positive, default=16)
    parser.add_argument("--threads", type=_positive, default=None, help="CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench/results-gpu.json"))
    args = parser.parse_args(argv)
    return GpuBenchSettings(
        models=tuple(args.models),
        device=args.device,
        dtype=args.dtype,
        image_tokens=args.image_tokens,
        text_prefix_tokens=args.text_prefix_tokens,
        questions=args.questions,
        suffix_tokens=args.suffix_tokens,
        batch=args.batch,
        out=args.out,
        threads=args.threads,
    )


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `--dtype` choice."""
    import torch

    dtype: torch.dtype = getattr(torch, DTYPES[name])
    return dtype


def build_random_model(family: str, device: str, dtype: torch.dtype) -> Any:
    """`family`'s LlavaNextForConditionalGeneration with seeded random weights, built directly
    on `device` in `dtype` (never materialised in fp32 first: yi34b is 70 GB at fp16)."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    from cvs_export.llava_next import as_config
    from cvs_families.registry import get_family

    config = as_config(get_family(family).config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    wrong = {p.dtype for p in model.parameters() if p.is_floating_point()} - {dtype}
    if wrong:
        raise RuntimeError(f"{family}: parameters built as {wrong}, not {dtype}")
    return model.eval()


@dataclass
class BenchInputs:
    """The embeddings both paths score: one prefix and the questions' suffixes."""

    prefix: torch.Tensor
    """(1, prefix, hidden): image positions, then text positions."""
    suffixes: torch.Tensor
    """(questions, suffix, hidden)."""


def make_inputs(model: Any, settings: GpuBenchSettings) -> BenchInputs:
    """Random token embeddings for the text, random vectors of the embeddings' scale for the
    image positions (the vision tower is not part of what is timed)."""
    import torch

    embed = model.get_input_embeddings()
    weight = embed.weight
    vocab, hidden = int(weight.shape[0]), int(weight.shape[1])
    device = weight.device
    generator = torch.Generator(device=device).manual_seed(1)
    scale = weight[: min(vocab, 4096)].float().std()
    image = torch.randn(
        1, settings.image_tokens, hidden, generator=generator, device=device, dtype=torch.float32
    )
    image = (image * scale).to(weight.dtype)  # (1, image, hidden)
    text_ids = torch.randint(
        0, vocab, (1, settings.text_prefix_tokens), generator=generator, device=device
    )
    suffix_ids = torch.randint(
        0, vocab, (settings.questions, settings.suffix_tokens), generator=generator, device=device
    )
    return BenchInputs(
        prefix=torch.cat([image, embed(text_ids)], dim=1),  # (1, prefix, hidden)
        suffixes=embed(suffix_ids),  # (questions, suffix, hidden)
    )


def study_loop_item(model: Any, prefix: torch.Tensor, suffix: torch.Tensor) -> torch.Tensor:
    """One question as the study scored it: prefix + suffix in one forward, no cache, logits
    at every position. Returns the last position's logits (vocab,) in float32."""
    import torch

    embeds = torch.cat([prefix, suffix[None]], dim=1)  # (1, prefix + suffix, hidden)
    hidden = model.model.language_model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    logits = model.lm_head(hidden)  # (1, prefix + suffix, vocab): every position
    return logits[0, -1].float()


def prefix_cache(model: Any, prefix: torch.Tensor) -> list[torch.Tensor]:
    """The prefix's key/value cache: 2·layers tensors (1, kv heads, prefix, head dim), key
    then value per layer, as the suffix wrapper takes it."""
    out = model.model.language_model(inputs_embeds=prefix, use_cache=True)
    flat: list[torch.Tensor] = []
    for layer in out.cache.layers:
        flat += [layer.keys, layer.values]
    return flat


def prefix_reuse_batch(
    suffix_part: Any, cache: list[torch.Tensor], suffixes: torch.Tensor
) -> torch.Tensor:
    """Last-position logits (batch, vocab) of `suffixes` (batch, seq, hidden) continuing the
    one prefix in `cache`, through the shared-prefix wrapper."""
    import torch

    batch, seq = int(suffixes.shape[0]), int(suffixes.shape[1])
    prefix_len = int(cache[0].shape[2])
    device = suffixes.device
    positions = prefix_len + torch.arange(seq, device=device, dtype=torch.int64)
    logits = suffix_part(
        suffixes,
        positions[None].expand(batch, seq),  # (batch, seq)
        torch.ones(batch, seq, dtype=torch.int64, device=device),  # no padding
        torch.full((batch, 1), seq - 1, dtype=torch.int64, device=device),
        cache,
    )  # (batch, 1, vocab)
    return logits[:, 0].float()


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of `work()`, the device synchronised on both sides."""
    _synchronize(device)
    start = time.perf_counter()
    result = work()
    _synchronize(device)
    return time.perf_counter() - start, result


def run_study_loop(
    model: Any, inputs: BenchInputs, settings: GpuBenchSettings
) -> tuple[float, torch.Tensor]:
    """(seconds per item, first batch's last-position logits (batch, vocab)) of the study
    loop over every question, after one warm-up question."""
    import torch

    study_loop_item(model, inputs.prefix, inputs.suffixes[0])  # warm-up
    kept = min(settings.batch, settings.questions)

    def every_question() -> torch.Tensor:
        first: list[torch.Tensor] = []
        for index in range(settings.questions):
            logits = study_loop_item(model, inputs.prefix, inputs.suffixes[index])
            if index < kept:
                first.append(logits)
        return torch.stack(first)

    seconds, first_logits = _timed(settings.device, every_question)
    return seconds / settings.questions, first_logits


def run_prefix_reuse(
    model: Any, inputs: BenchInputs, settings: GpuBenchSettings
) -> tuple[float, float, torch.Tensor]:
    """(seconds per item, prefix seconds, first batch's logits) of prefix reuse: the prefix
    once, then the suffixes in batches; after one warm-up of a prefix and a batch."""
    from cvs_export.llava_next import part_module

    suffix_part = part_module(model, "suffix")
    warm = prefix_cache(model, inputs.prefix)
    prefix_reuse_batch(suffix_part, warm, inputs.suffixes[: settings.batch])
    del warm

    timings: dict[str, float] = {}

    def every_question() -> torch.Tensor:
        prefix_seconds, cache = _timed(settings.device, lambda: prefix_cache(model, inputs.prefix))
        timings["prefix"] = prefix_seconds
        first = prefix_reuse_batch(suffix_part, cache, inputs.suffixes[: settings.batch])
        for start in range(settings.batch, settings.questions, settings.batch):
            prefix_reuse_batch(suffix_part, cache, inputs.suffixes[start : start + settings.batch])
        return first

    seconds, first_logits = _timed(settings.device, every_question)
    return seconds / settings.questions, timings["prefix"], first_logits


def _throughput(seconds_per_item: float, gflop_per_item: float) -> dict[str, float]:
    return {
        "seconds_per_item": seconds_per_item,
        "items_per_s": 1.0 / seconds_per_item,
        "gflop_per_item": gflop_per_item,
        "tflops_achieved": gflop_per_item / seconds_per_item / 1e3,
    }


def work_per_item(size: LanguageModelSize, settings: GpuBenchSettings) -> dict[str, float]:
    """GFLOP per item of each path (prefix reuse: the prefix shared by all the questions)."""
    prefix, suffix = settings.prefix_tokens, settings.suffix_tokens
    whole = prefix + suffix
    study = size.flops(whole, whole * (whole + 1) // 2, whole)
    prefix_once = size.flops(prefix, prefix * (prefix + 1) // 2, 0)
    one_suffix = size.flops(suffix, suffix * prefix + suffix * (suffix + 1) // 2, 1)
    return {
        "study_loop": study / 1e9,
        "prefix_reuse": (prefix_once / settings.questions + one_suffix) / 1e9,
    }


def _peak_memory(device: str) -> tuple[int, str]:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    import resource

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return peak, "process peak RSS (ru_maxrss), whole process so far"


def benchmark_model(family: str, settings: GpuBenchSettings) -> dict[str, Any]:
    """Build `family` with random weights and time both paths; one result row."""
    import torch

    from cvs_families.registry import get_family

    if settings.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dtype = torch_dtype(settings.dtype)
    size = language_model_size(get_family(family))
    build_seconds, model = _timed(
        settings.device, lambda: build_random_model(family, settings.device, dtype)
    )
    with torch.inference_mode():
        inputs = make_inputs(model, settings)
        study_seconds, study_logits = run_study_loop(model, inputs, settings)
        reuse_seconds, prefix_seconds, reuse_logits = run_prefix_reuse(model, inputs, settings)
        difference = (
            (torch.log_softmax(study_logits, -1) - torch.log_softmax(reuse_logits, -1)).abs().max()
        )
    gflop = work_per_item(size, settings)
    peak, peak_source = _peak_memory(settings.device)
    return {
        "model": family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "language_model": asdict(size),
        "kv_heads": int(model.config.text_config.num_key_value_heads),
        "prefix_tokens": settings.prefix_tokens,
        "image_tokens": settings.image_tokens,
        "text_prefix_tokens": settings.text_prefix_tokens,
        "suffix_tokens": settings.suffix_tokens,
        "items": settings.questions,
        "batch": settings.batch,
        "build_seconds": build_seconds,
        "study_loop": _throughput(study_seconds, gflop["study_loop"]),
        "prefix_reuse": {
            **_throughput(reuse_seconds, gflop["prefix_reuse"]),
            "prefix_seconds": prefix_seconds,
        },
        "speedup_prefix_reuse_vs_study_loop": study_seconds / reuse_seconds,
        "max_abs_dlogprob_prefix_reuse_vs_study_loop": float(difference),
        "compared_items": int(study_logits.shape[0]),
        "peak_memory_bytes": peak,
        "peak_memory_source": peak_source,
    }


def _commit() -> str:
    """The checkout's commit (read-only `git rev-parse`), or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def describe_run(settings: GpuBenchSettings) -> dict[str, Any]:
    """Provenance and settings: device, dtype, versions, commit, sizes."""
    import torch
    import transformers

    cuda = settings.device == "cuda"
    return {
        "benchmark": "study loop vs prefix reuse, PyTorch",
        "scope": SCOPE,
        "device": settings.device,
        "device_name": torch.cuda.get_device_name() if cuda else cpu_model(),
        "dtype": settings.dtype,
        "threads": None if cuda else torch.get_num_threads(),
        "commit": _commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": str(torch.version.cuda) if cuda else "",
        },
        "settings": {
            "image_tokens": settings.image_tokens,
            "text_prefix_tokens": settings.text_prefix_tokens,
            "questions": settings.questions,
            "suffix_tokens": settings.suffix_tokens,
            "batch": settings.batch,
        },
    }


def summary_table(results: dict[str, Any]) -> str:
    """A short plain-text table of the per-model rows."""
    header = (
        f"{'model':<8} {'tokens':>11} {'study s/item':>12} {'reuse s/item':>12} "
        f"{'speed-up':>9} {'TFLOP/s study':>13} {'TFLOP/s reuse':>13} {'max|Δ|':>9} "
        f"{'peak GiB':>8}"
    )
    lines = [
        f"{results['device_name']} ({results['device']}, {results['dtype']}); {results['scope']}",
        header,
    ]
    for row in results["models"]:
        study, reuse = row["study_loop"], row["prefix_reuse"]
        tokens = f"{row['prefix_tokens']}+{row['suffix_tokens']}"
        lines.append(
            f"{row['model']:<8} {tokens:>11} {study['seconds_per_item']:>12.4g} "
            f"{reuse['seconds_per_item']:>12.4g} "
            f"{row['speedup_prefix_reuse_vs_study_loop']:>8.3g}× "
            f"{study['tflops_achieved']:>13.4g} {reuse['tflops_achieved']:>13.4g} "
            f"{row['max_abs_dlogprob_prefix_reuse_vs_study_loop']:>9.2e} "
            f"{row['peak_memory_bytes'] / GIB:>8.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark each model, write the JSON to `--out`, print the table; exit status."""
    settings = parse_args(argv)
    import torch

    from cvs_families.registry import UnknownFamilyError, get_family

    for family in settings.models:
        try:
            get_family(family)
        except UnknownFamilyError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if settings.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; --device cpu runs the smoke mode", file=sys.stderr)
        return 2
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)

    results = describe_run(settings)
    results["models"] = []
    for family in settings.models:
        results["models"].append(benchmark_model(family, settings))
        gc.collect()  # the model is unreachable once benchmark_model returns
        if settings.device == "cuda":
            torch.cuda.empty_cache()
        write_json(settings.out, results)  # rewritten after each model: a failure
        # on a later model (out of memory on yi34b) keeps the rows already measured
    print(summary_table(results))
    print(f"wrote {settings.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
