"""Parity of an exported engine with PyTorch, at untraced shapes, on inputs the model produces.

Two levels, both failing loudly:

- **Parts.** Each part runs in onnxruntime and as its PyTorch wrapper at every `check_sizes`
  entry of its spec (shapes and batch sizes it was not traced at), on real inputs: tiles of
  prepared images, token ids of rendered survey prompts, their embeddings with image features
  spliced in, and a key/value cache the model itself computed over the first tokens. Every
  output must meet the spec's elementwise tolerance; cache outputs are compared only at
  unpadded positions (padded rows are garbage in both, differently).
- **Chain.** Vision → the family's numpy packing → embedding → decoder with a prefix cache
  (each group's shared prefix run once, suffixes batched with left padding on top) gives option
  scores that are compared with the PyTorch reference scorer (the HF model's own forward): max
  |Δ log-prob| within 1e-4 at fp32, plus Jensen–Shannon distance and top-1 agreement.

A failure raises `ParityError` carrying a table of max/mean differences per output; it is never
a warning. Random-normal dummies inflate differences tenfold against the model's own inputs;
they are used only to trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from cvs_export.llava_next import part_module
from cvs_export.parts import PartSpec, Precision, Tolerance, ToleranceClass, tolerance_class
from cvs_families import prompt_text
from cvs_families.checkpoint import LoadedModel, letter_token_ids
from cvs_families.reference import ReferenceScorer, pad_token_for
from cvs_families.requests import ScoringRequest
from cvs_families.scores import OptionScores
from cvs_families.spec import FamilySpec, PreparedImage
from cvs_runtime.chain import embed_requests, empty_cache, run_prefix, shared_prefix_length
from cvs_runtime.comparison import compare_scores
from cvs_runtime.parts import PartRunner, past_from_present
from cvs_runtime.scheduler import score_with_parts

CHAIN_TOLERANCES: Mapping[ToleranceClass, float] = {
    "fp32": 1e-4,
    "fp16": 5e-2,
    "bf16": 2e-1,
    "int8": 0.5,
}
"""Max |engine − reference| on option log-probs per number format (fp32: the issue's 1e-4);
below fp32 recorded per build, the verdict is judged by `cvs_export.precision`'s targets."""

QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "How important is family in your life?",
        ("Very important", "Rather important", "Not very important", "Not at all important"),
    ),
    (
        "Would you say that most people can be trusted, or that you need to be very careful "
        "in dealing with people?",
        ("Most people can be trusted", "Need to be very careful"),
    ),
    (
        "How much confidence do you have in the police?",
        ("A great deal", "Quite a lot", "Not very much", "None at all"),
    ),
    (
        "Taking all things together, would you say you are happy?",
        ("Very happy", "Rather happy", "Not very happy", "Not at all happy", "Don't know"),
    ),
)
"""Survey-style questions the validation prompts ask, in the survey prompts' wording
(`cvs_families.prompt_text`)."""
PERSONA_TEXT = prompt_text.PERSONA_TEXT.format(country="Brazil")
PERSONA_IMAGE = prompt_text.PERSONA_IMAGE.format(cue=prompt_text.DEFAULT_CUE)
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((60, 110), (150, 64))
"""(height, width) of the two validation images, relative to a 42 px tile; scaled by the
family's tile size. Their aspect ratios pick different anyres grids."""


class ParityError(AssertionError):
    """An exported engine differs from PyTorch beyond its tolerance; the message is the table."""

    def __init__(self, report: ValidationReport) -> None:
        super().__init__("engine failed parity with PyTorch:\n" + report.table())
        self.report = report
        """The full results."""


@dataclass(frozen=True)
class Comparison:
    """One output of one part at one shape, engine vs PyTorch."""

    part: str
    """Part name."""
    output: str
    """Output name."""
    case: str
    """The axis sizes it ran at, e.g. `batch=3 seq=11`."""
    max_abs: float
    """Largest |engine − pytorch| over compared values."""
    mean_abs: float
    """Mean |engine − pytorch| over compared values."""
    where: tuple[int, ...]
    """Index of the worst value relative to its bound."""
    engine: float
    """Engine value there."""
    reference: float
    """PyTorch value there."""
    atol: float
    """Absolute tolerance."""
    rtol: float
    """Relative tolerance."""
    compared: int
    """Values compared (padded positions left out)."""
    passed: bool
    """Every compared value within atol + rtol·|pytorch| (NaN fails)."""


@dataclass(frozen=True)
class ChainComparison:
    """Option scores of the whole engine chain vs the PyTorch reference scorer."""

    requests: int
    """Requests scored."""
    max_logprob_diff: float
    """Largest |Δ option log-prob|."""
    mean_logprob_diff: float
    """Mean |Δ option log-prob|."""
    max_js_distance: float
    """Largest Jensen–Shannon distance between renormalised option distributions."""
    top1_agreement: float
    """Share of requests whose most likely option agrees."""
    tolerance: float
    """Bound on max |Δ option log-prob|."""
    passed: bool
    """max_logprob_diff within the tolerance (NaN fails)."""


@dataclass
class ValidationReport:
    """Everything validation compared, for the build log and the manifest."""

    precision: Precision
    """Engine precision the tolerances are for."""
    parts: list[Comparison] = field(default_factory=list)
    """Part-level comparisons."""
    chain: ChainComparison | None = None
    """End-to-end comparison, when run."""

    @property
    def passed(self) -> bool:
        """True when every comparison passed (and there was at least one)."""
        checks = [c.passed for c in self.parts] + ([self.chain.passed] if self.chain else [])
        return bool(checks) and all(checks)

    def table(self) -> str:
        """Max/mean differences per output and case, then the chain line."""
        lines = [
            f"{'part':<10} {'output':<16} {'case':<38} {'max|Δ|':>10} {'mean|Δ|':>10} "
            f"{'atol':>8} {'rtol':>8}  verdict"
        ]
        for c in self.parts:
            lines.append(
                f"{c.part:<10} {c.output:<16} {c.case:<38} {c.max_abs:>10.3g} {c.mean_abs:>10.3g} "
                f"{c.atol:>8.1g} {c.rtol:>8.1g}  "
                + ("ok" if c.passed else f"FAIL at {c.where}: {c.engine:.6g} vs {c.reference:.6g}")
            )
        if self.chain is not None:
            ch = self.chain
            lines.append(
                f"chain: {ch.requests} requests, max|Δ logprob| {ch.max_logprob_diff:.3g} "
                f"(mean {ch.mean_logprob_diff:.3g}, tolerance {ch.tolerance:.1g}), max JS "
                f"{ch.max_js_distance:.3g}, top-1 agreement {ch.top1_agreement:.0%}  "
                + ("ok" if ch.passed else "FAIL")
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return {
            "precision": self.precision,
            "passed": self.passed,
            "parts": [asdict(c) for c in self.parts],
            "chain": asdict(self.chain) if self.chain else None,
        }


def compare(
    part: str,
    output: str,
    case: str,
    engine: NDArray[Any],
    reference: NDArray[Any],
    tolerance: Tolerance,
    valid: NDArray[np.bool_] | None = None,
) -> Comparison:
    """Compare one output elementwise; `valid` (broadcast to the shape) masks padded values."""
    if engine.shape != reference.shape:
        raise ParityShapeError(f"{part}.{output} at {case}: {engine.shape} vs {reference.shape}")
    got = engine.astype(np.float64)
    want = reference.astype(np.float64)
    mask = np.ones(got.shape, bool) if valid is None else np.broadcast_to(valid, got.shape)
    diff = np.where(mask, np.abs(got - want), 0.0)
    diff = np.where(mask & ~np.isfinite(got - want), np.inf, diff)
    excess = diff - (tolerance.atol + tolerance.rtol * np.abs(want))
    compared = int(mask.sum())
    worst = np.unravel_index(int(np.argmax(np.where(mask, excess, -np.inf))), got.shape)
    return Comparison(
        part=part,
        output=output,
        case=case,
        max_abs=float(diff.max()) if compared else 0.0,
        mean_abs=float(diff.sum() / compared) if compared else 0.0,
        where=tuple(int(i) for i in worst),
        engine=float(got[worst]),
        reference=float(want[worst]),
        atol=tolerance.atol,
        rtol=tolerance.rtol,
        compared=compared,
        passed=compared > 0 and bool(np.all(np.where(mask, excess <= 0, True))),
    )


class ParityShapeError(ValueError):
    """Engine and PyTorch returned different shapes for one output."""


# Validation material: real prompts, real images, the model's own embeddings ------------------


@dataclass(frozen=True)
class ValidationSet:
    """Prompts and images validation runs on, built from the family and its tokenizer."""

    requests: tuple[ScoringRequest, ...]
    """Chain requests: a text group and one group per image (two anyres grids)."""
    images: tuple[PreparedImage, ...]
    """The prepared validation images."""


def validation_image(height: int, width: int, seed: int) -> NDArray[np.uint8]:
    """A deterministic (H, W, 3) RGB picture: gradients, a disc and stripes (no data files)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    picture = np.stack(
        [
            255 * x / max(width - 1, 1),
            255 * y / max(height - 1, 1),
            127 + 127 * np.sin(x / 5 + y / 7 + seed),
        ],
        axis=-1,
    )
    disc = (x - width * 0.6) ** 2 + (y - height * 0.4) ** 2 < (min(height, width) / 4) ** 2
    picture[disc] = rng.integers(0, 256, 3)
    picture[:, (np.arange(width) // 6) % 3 == 0] *= 0.5
    return np.clip(picture, 0, 255).astype(np.uint8)


def render_prompt(
    loaded: LoadedModel, persona: str, question: str, options: Sequence[str], image: bool
) -> NDArray[np.int64]:
    """Token ids of one survey prompt in the family's chat template, ending before the letter:
    the survey's wording (persona, rules, question, lettered options, answer prefix)."""
    lettered = "\n".join(
        prompt_text.OPTION_LINE.format(letter=letter, label=label)
        for letter, label in zip(prompt_text.LETTERS[: len(options)], options, strict=True)
    )
    body = prompt_text.QUESTION_BODY.format(question=question, options=lettered)
    text = f"{persona} {prompt_text.RULES}{prompt_text.QUESTION_LEAD}{body}"
    content: list[dict[str, str]] = [{"type": "image"}] if image else []
    content.append({"type": "text", "text": text})
    rendered = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=loaded.spec.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    joiner = "" if rendered[-1:].isspace() else " "
    answer = rendered + joiner + prompt_text.ANSWER_PREFIX
    ids = loaded.tokenizer(answer, add_special_tokens=False).input_ids
    return np.asarray(ids, dtype=np.int64)


def validation_set(loaded: LoadedModel) -> ValidationSet:
    """Survey prompts (text and image conditions) and two images, for this family."""
    spec = loaded.spec
    scale = spec.tile_size / 42
    images = tuple(
        spec.prepare_image(validation_image(int(h * scale), int(w * scale), seed))
        for seed, (h, w) in enumerate(IMAGE_SIZES)
    )
    groups: list[tuple[str, PreparedImage | None, str, Sequence[int]]] = [
        ("text", None, PERSONA_TEXT, (0, 1, 2)),
        ("image-0", images[0], PERSONA_IMAGE, (1, 3)),
        ("image-1", images[1], PERSONA_IMAGE, (0, 2)),
    ]
    requests: list[ScoringRequest] = []
    for key, image, persona, questions in groups:
        rows = [
            render_prompt(loaded, persona, *QUESTIONS[q], image=image is not None)
            for q in questions
        ]
        prefix = shared_prefix_length(rows)
        for q, row in zip(questions, rows, strict=True):
            options = letter_token_ids(loaded.tokenizer, len(QUESTIONS[q][1]))
            requests.append(
                ScoringRequest(
                    input_ids=row,
                    image=image,
                    option_token_ids=np.asarray(options, dtype=np.int64),
                    group_key=key,
                    prefix_len=prefix,
                    item_id=f"{key}/q{q}",
                )
            )
    return ValidationSet(requests=tuple(requests), images=images)


class TorchParts:
    """The PyTorch wrappers of a loaded model behind the part interface: the parity reference."""

    def __init__(self, model: torch.nn.Module, specs: Mapping[str, PartSpec]) -> None:
        self.specs = dict(specs)
        """Part specs by name."""
        self._modules = {name: part_module(model, name) for name in specs}
        self._dtype = next(model.parameters()).dtype

    @property
    def part_names(self) -> tuple[str, ...]:
        """The parts."""
        return tuple(self.specs)

    def input_names(self, part: str) -> tuple[str, ...]:
        """Input names of `part`."""
        return self.specs[part].input_names

    def output_names(self, part: str) -> tuple[str, ...]:
        """Output names of `part`."""
        return self.specs[part].output_names

    def run(
        self,
        part: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run the wrapper of `part` in PyTorch on numpy inputs."""
        spec = self.specs[part]
        tensors = {
            t.name: torch.from_numpy(np.ascontiguousarray(inputs[t.name])).to(
                self._dtype if t.dtype == "float" else torch.int64
            )
            for t in spec.inputs
        }
        with torch.no_grad():
            result = self._modules[part](*spec.wrapper_arguments(tensors))
        values = result if isinstance(result, tuple) else (result,)
        named = {
            name: value.detach().float().numpy()
            for name, value in zip(spec.output_names, values, strict=True)
        }
        return {name: named[name] for name in (outputs or spec.output_names)}


def compare_chain(
    engine: Sequence[OptionScores], reference: Sequence[OptionScores], tolerance: float
) -> ChainComparison:
    """Option log-prob differences, JS distances and top-1 agreement of two score lists."""
    agreement = compare_scores(engine, reference)
    return ChainComparison(
        requests=agreement.requests,
        max_logprob_diff=agreement.max_logprob_diff,
        mean_logprob_diff=agreement.mean_logprob_diff,
        max_js_distance=agreement.max_js,
        top1_agreement=agreement.top1,
        tolerance=tolerance,
        passed=bool(agreement.max_logprob_diff <= tolerance),
    )


# Part-level inputs: what the model produces, at a spec's check sizes --------------------------


@dataclass(frozen=True)
class Material:
    """Real tensors to cut part inputs from."""

    tiles: NDArray[np.float32]
    """(tiles, 3, tile, tile) every validation image's prepared tiles, concatenated."""
    token_rows: tuple[NDArray[np.int64], ...]
    """Prompt token ids (with image placeholders)."""
    embedded_rows: tuple[NDArray[np.float32], ...]
    """Per prompt (expanded tokens, hidden): embeddings with image features spliced in."""
    image_starts: tuple[int | None, ...]
    """Per prompt, where its image features start (None without an image)."""


def build_material(
    reference: PartRunner, spec: FamilySpec, vset: ValidationSet, pad_token_id: int
) -> Material:
    """Cut-able real inputs: tiles, token rows and the reference's own embeddings."""
    requests = vset.requests
    starts: list[int | None] = []
    for request in requests:
        hit = np.flatnonzero(request.input_ids == spec.image_token_id)
        starts.append(int(hit[0]) if hit.size else None)
    return Material(
        tiles=np.concatenate([image.pixel_values for image in vset.images]),
        token_rows=tuple(r.input_ids for r in requests),
        embedded_rows=tuple(embed_requests(reference, spec, requests, pad_token_id=pad_token_id)),
        image_starts=tuple(starts),
    )


def case_label(sizes: Mapping[str, int]) -> str:
    """`batch=3 seq=11 …` in the spec's axis order."""
    return " ".join(f"{axis}={size}" for axis, size in sizes.items())


def vision_inputs(sizes: Mapping[str, int], material: Material) -> dict[str, NDArray[Any]]:
    """`tiles` real tiles (cycling through the validation images)."""
    index = np.arange(sizes["tiles"]) % material.tiles.shape[0]
    return {"pixel_values": material.tiles[index]}


def embedding_inputs(sizes: Mapping[str, int], material: Material) -> dict[str, NDArray[Any]]:
    """The first `seq` tokens of `batch` prompts."""
    rows = [material.token_rows[(i * 3) % len(material.token_rows)] for i in range(sizes["batch"])]
    return {"input_ids": np.stack([row[: sizes["seq"]] for row in rows])}


def decoder_inputs(
    sizes: Mapping[str, int], material: Material, reference: PartRunner, spec: FamilySpec
) -> dict[str, NDArray[Any]]:
    """`batch` windows of `total` real embeddings; the first `past` run through the reference
    into the cache, the last `seq` are the new tokens. Row 0 is left-padded by 2 where that
    leaves its cached part non-empty; odd rows with an image start at the image."""
    batch, seq, past, k = sizes["batch"], sizes["seq"], sizes["past"], sizes["k"]
    total = sizes["total"]
    if total != past + seq:
        raise ValueError(f"decoder check sizes: total {total} != past {past} + seq {seq}")
    rows = material.embedded_rows
    hidden = rows[0].shape[1]
    embeds = np.zeros((batch, total, hidden), dtype=np.float32)  # (batch, total, hidden)
    mask = np.zeros((batch, total), dtype=np.int64)
    offsets = np.zeros(batch, dtype=np.int64)
    for b in range(batch):
        source = (b * 2) % len(rows)
        row, image_start = rows[source], material.image_starts[source]
        pads = 2 if b == 0 and (past == 0 or past > 2) and total > 3 else 0
        length = total - pads
        start = image_start if b % 2 == 1 and image_start is not None else row.shape[0] - length
        start = min(max(start, 0), row.shape[0] - length)
        embeds[b, pads:] = row[start : start + length]
        mask[b, pads:] = 1
        offsets[b] = start
    positions = np.where(mask == 1, offsets[:, None] + np.cumsum(mask, axis=1) - 1, 1)
    cache = empty_cache(spec.text_num_layers, batch, spec.text_num_kv_heads, spec.text_head_dim)
    if past > 0:
        out = reference.run(
            "decoder",
            {
                "inputs_embeds": embeds[:, :past],
                "position_ids": positions[:, :past],
                "attention_mask": mask[:, :past],
                "logit_index": np.full((batch, 1), past - 1, dtype=np.int64),
                **cache,
            },
        )
        cache = past_from_present(out)
    index = np.clip(seq - 1 - np.arange(k), 0, None)
    return {
        "inputs_embeds": embeds[:, past:],
        "position_ids": positions[:, past:],
        "attention_mask": mask,
        "logit_index": np.tile(index, (batch, 1)).astype(np.int64),
        **cache,
    }


def suffix_inputs(
    sizes: Mapping[str, int], material: Material, reference: PartRunner, spec: FamilySpec
) -> dict[str, NDArray[Any]]:
    """The first `prefix` real embeddings of the longest prompt, run through the reference
    decoder into a batch-1 cache; `batch` rows of `seq` real embeddings continuing it, right-padded
    (row 0 by 2 where that leaves a real token), positions counting on from the prefix."""
    batch, seq, prefix, k = sizes["batch"], sizes["seq"], sizes["prefix"], sizes["k"]
    rows = sorted(material.embedded_rows, key=lambda r: -r.shape[0])
    cache = run_prefix(reference, spec, rows[0][:prefix])  # (1, kv, prefix, dim) per layer
    hidden = rows[0].shape[-1]
    embeds = np.zeros((batch, seq, hidden), dtype=np.float32)  # (batch, seq, hidden)
    mask = np.zeros((batch, seq), dtype=np.int64)
    for b in range(batch):
        row = rows[(b * 2) % len(rows)]
        length = seq - (2 if b == 0 and seq > 3 else 0)
        start = min(prefix, row.shape[0] - length)
        embeds[b, :length] = row[start : start + length]
        mask[b, :length] = 1
    lengths = mask.sum(axis=1)
    index = np.clip(lengths[:, None] - 1 - np.arange(k)[None], 0, None)
    return {
        "inputs_embeds": embeds,
        "position_ids": np.tile(prefix + np.arange(seq, dtype=np.int64), (batch, 1)),
        "suffix_mask": mask,
        "logit_index": index.astype(np.int64),
        **cache,
    }


def padding_validity(
    spec: PartSpec, output: str, inputs: Mapping[str, NDArray[Any]], shape: tuple[int, ...]
) -> NDArray[np.bool_] | None:
    """Where `output` holds real (unpadded) values, from the 2-D mask it is `padded_by`."""
    tensor = spec.tensor(output)
    if tensor.padded_by is None:
        return None
    mask_spec = spec.tensor(tensor.padded_by)
    axes = [tensor.shape.index(axis) for axis in mask_spec.shape]
    view = [1] * len(shape)
    for position, size in zip(axes, inputs[tensor.padded_by].shape, strict=True):
        view[position] = size
    if axes != sorted(axes):
        raise ValueError(f"{output}: mask axes {mask_spec.shape} are out of order in the output")
    return inputs[tensor.padded_by].reshape(view) != 0


def part_inputs(
    spec: PartSpec,
    sizes: Mapping[str, int],
    material: Material,
    reference: PartRunner,
    family: FamilySpec,
) -> dict[str, NDArray[Any]]:
    """Real inputs of `spec`'s part at `sizes`."""
    if spec.name == "vision":
        return vision_inputs(sizes, material)
    if spec.name == "embedding":
        return embedding_inputs(sizes, material)
    if spec.name == "decoder":
        return decoder_inputs(sizes, material, reference, family)
    if spec.name == "suffix":
        return suffix_inputs(sizes, material, reference, family)
    raise ValueError(f"no validation inputs for part {spec.name!r}")


def validate_parts(
    engine: PartRunner,
    reference: PartRunner,
    specs: Mapping[str, PartSpec],
    material: Material,
    family: FamilySpec,
    precision: Precision,
) -> list[Comparison]:
    """Every part at every check size: engine vs reference, output by output."""
    comparisons = []
    for spec in specs.values():
        tolerance = spec.tolerance(precision)
        for sizes in spec.check_sizes:
            inputs = part_inputs(spec, sizes, material, reference, family)
            want = reference.run(spec.name, inputs)
            got = engine.run(spec.name, inputs)
            for name in spec.output_names:
                valid = padding_validity(spec, name, inputs, want[name].shape)
                comparisons.append(
                    compare(
                        spec.name, name, case_label(sizes), got[name], want[name], tolerance, valid
                    )
                )
    return comparisons


def validate_engine(
    loaded: LoadedModel,
    engine: PartRunner,
    specs: Mapping[str, PartSpec],
    precision: Precision,
    *,
    chain: bool = True,
    vset: ValidationSet | None = None,
) -> ValidationReport:
    """Part-level and end-to-end parity of `engine` with `loaded`'s PyTorch model."""
    family = loaded.spec
    pad = pad_token_for(loaded)
    reference = TorchParts(loaded.model, specs)
    vset = vset or validation_set(loaded)
    material = build_material(reference, family, vset, pad)
    report = ValidationReport(precision=precision)
    report.parts = validate_parts(engine, reference, specs, material, family, precision)
    if chain:
        got = score_with_parts(engine, family, vset.requests, pad_token_id=pad)
        want = ReferenceScorer(loaded).score(vset.requests)
        report.chain = compare_chain(got, want, CHAIN_TOLERANCES[tolerance_class(precision)])
    return report


def enforce(report: ValidationReport) -> None:
    """Raise ParityError (with the table) unless every comparison passed."""
    if not report.passed:
        raise ParityError(report)
