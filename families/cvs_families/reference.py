"""The PyTorch reference scorer: the answer every engine is judged against.

It runs the Hugging Face model's own forward (`LlavaNextModel` with `pixel_values` and
`image_sizes`, then the output head), so the runtime's numpy packing is checked against HF's
rather than against a copy of itself. Around it only what the HF processor and `generate` do:
the one image placeholder of a request expanded to `spec.num_image_tokens(h, w)` copies, tiles of
a batch zero-padded to the batch's most tiles, left padding with explicit
`position_ids = cumsum(mask) − 1`. A batch may mix anyres grids and text items.

Batch invariance by construction. Padding every prompt to the batch's longest moves its tokens
against the kernels' blocking, which at fp32 changed option log-probs by up to 2.1e-5 on `smol`
and 1.4e-5 on the tiny families (batch 1 vs 8) — over the 1e-5 the project promises. So each
prompt is left-padded to its own length rounded up to `pad_multiple` (a length bucket), batches
are formed within a bucket, and the output head runs in float64 (a one-row head takes another
GEMM path than an eight-row one). A prompt then sees the same computation whatever its batch:
option log-probs agree to ~1e-14 across batch sizes and orders (measured).

Per item the full-vocabulary log-softmax at the answer position is reduced in float64 to
`OptionScores`; `score_items` adds the raw-mass rule; `score_continuations` sums the
log-likelihood of candidate continuations (country screening) through a key/value cache of the
prompt. Imports torch: import this
module lazily.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray

from cvs_families.checkpoint import pad_token_id
from cvs_families.requests import MASS_THRESHOLD, ScoredItem, ScoringRequest, judge_option_mass
from cvs_families.scores import OptionScores, option_scores_from_logits

if TYPE_CHECKING:
    from cvs_families.checkpoint import LoadedModel
    from cvs_families.spec import FamilySpec


@dataclass(frozen=True)
class ReferenceBatch:
    """A batch as the HF model takes it."""

    input_ids: torch.Tensor
    """(batch, seq) int64, left-padded, each image placeholder expanded to its token count."""
    attention_mask: torch.Tensor
    """(batch, seq) int64: 0 at padding."""
    position_ids: torch.Tensor
    """(batch, seq) int64: cumsum(mask) − 1, and 1 at padding (as HF's `generate`)."""
    pixel_values: torch.Tensor | None
    """(images, max_tiles, 3, tile, tile) in the model's dtype, tiles zero-padded; None when no
    item of the batch has an image. Images in batch order."""
    image_sizes: torch.Tensor | None
    """(images, 2) int64 original (height, width) of each image."""


def expand_image_placeholder(request: ScoringRequest, spec: FamilySpec) -> NDArray[np.int64]:
    """(tokens,) → (tokens − 1 + image_tokens,): the one placeholder repeated as HF's processor
    does (`spec.num_image_tokens(height, width)` copies); unchanged without an image."""
    request.check_placeholder(spec.image_token_id)
    ids = np.asarray(request.input_ids, dtype=np.int64)
    if request.image is None:
        return ids
    where = int(np.flatnonzero(ids == spec.image_token_id)[0])
    count = spec.num_image_tokens(*request.image.image_size)
    fill = np.full(count, spec.image_token_id, dtype=np.int64)
    return np.concatenate([ids[:where], fill, ids[where + 1 :]])


PAD_MULTIPLE = 32
"""Prompts are left-padded to a multiple of this many tokens (their length bucket)."""


def padded_length(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return -(-length // multiple) * multiple


def plan_batches(lengths: Sequence[int], batch_size: int, multiple: int) -> list[list[int]]:
    """Request indices grouped into batches: same length bucket only, buckets in order of first
    appearance, requests in their order within a bucket, at most `batch_size` per batch."""
    buckets: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        buckets.setdefault(padded_length(length, multiple), []).append(index)
    return [
        members[start : start + batch_size]
        for members in buckets.values()
        for start in range(0, len(members), batch_size)
    ]


def build_batch(
    requests: Sequence[ScoringRequest],
    spec: FamilySpec,
    *,
    pad_token_id: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    pad_multiple: int = PAD_MULTIPLE,
) -> ReferenceBatch:
    """Left-pad the expanded prompts (to the longest one's length bucket) and stack the images."""
    if pad_token_id == spec.image_token_id:
        raise ValueError("the pad token must not be the image token (it would count as image)")
    rows = [expand_image_placeholder(request, spec) for request in requests]
    length = padded_length(max(row.shape[0] for row in rows), pad_multiple)
    input_ids = np.full((len(rows), length), pad_token_id, dtype=np.int64)  # (batch, seq)
    mask = np.zeros((len(rows), length), dtype=np.int64)  # (batch, seq)
    for index, row in enumerate(rows):
        input_ids[index, length - row.shape[0] :] = row
        mask[index, length - row.shape[0] :] = 1
    positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 1)  # (batch, seq)
    images = [request.image for request in requests if request.image is not None]
    pixel_values = image_sizes = None
    if images:
        tiles = max(image.pixel_values.shape[0] for image in images)
        side = images[0].pixel_values.shape[-1]
        stacked = np.zeros((len(images), tiles, 3, side, side), dtype=np.float32)
        for index, image in enumerate(images):
            stacked[index, : image.pixel_values.shape[0]] = image.pixel_values
        pixel_values = torch.from_numpy(stacked).to(device=device, dtype=dtype)
        sizes = np.asarray([image.image_size for image in images], dtype=np.int64)  # (images, 2)
        image_sizes = torch.from_numpy(sizes).to(device)
    return ReferenceBatch(
        input_ids=torch.from_numpy(input_ids).to(device),
        attention_mask=torch.from_numpy(mask).to(device),
        position_ids=torch.from_numpy(positions).to(device),
        pixel_values=pixel_values,
        image_sizes=image_sizes,
    )


def head_logits_float64(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """(..., hidden) final hidden states → (..., vocab) float64 logits through the model's own
    output head, computed in float64."""
    head = model.get_output_embeddings()
    with torch.no_grad():
        logits = hidden.to(torch.float64) @ head.weight.to(torch.float64).T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias.to(torch.float64)
    return logits


def answer_logits(model: Any, batch: ReferenceBatch) -> torch.Tensor:
    """(batch, vocab) float64 logits at the last position (the answer position)."""
    with torch.no_grad():
        output = model.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            pixel_values=batch.pixel_values,
            image_sizes=batch.image_sizes,
            use_cache=False,
        )
        return head_logits_float64(model, output.last_hidden_state[:, -1])  # (batch, vocab)


def scores_from_answer_logits(
    logits: torch.Tensor, requests: Sequence[ScoringRequest]
) -> list[OptionScores]:
    """Reduce (batch, vocab) answer logits to one `OptionScores` per request (float64)."""
    rows = logits.detach().to(torch.float64).cpu().numpy()
    return [
        option_scores_from_logits(row, request.option_token_ids)
        for row, request in zip(rows, requests, strict=True)
    ]


def pad_token_for(loaded: LoadedModel) -> int:
    """A pad id that is a real token and not the image token (its value is masked anyway)."""
    return pad_token_id(loaded.spec, loaded.tokenizer)


class ReferenceScorer:
    """Scores `ScoringRequest`s with the HF model, batched; results independent of batching."""

    def __init__(
        self, loaded: LoadedModel, batch_size: int = 8, pad_multiple: int = PAD_MULTIPLE
    ) -> None:
        if batch_size < 1 or pad_multiple < 1:
            raise ValueError(f"batch_size {batch_size} and pad_multiple {pad_multiple} must be ≥ 1")
        self.loaded = loaded
        """The model, tokenizer and spec."""
        self.batch_size = batch_size
        """Requests per forward pass."""
        self.pad_multiple = pad_multiple
        """Prompts are left-padded to a multiple of this (their length bucket)."""
        parameter = next(loaded.model.parameters())
        self._dtype = parameter.dtype
        self._device = parameter.device
        self._pad = pad_token_for(loaded)

    @property
    def spec(self) -> FamilySpec:
        """The model family."""
        return self.loaded.spec

    def batch(self, requests: Sequence[ScoringRequest]) -> ReferenceBatch:
        """The HF inputs of one batch (exposed for tests that mutate them)."""
        return build_batch(
            requests,
            self.spec,
            pad_token_id=self._pad,
            dtype=self._dtype,
            device=self._device,
            pad_multiple=self.pad_multiple,
        )

    def expanded_length(self, request: ScoringRequest) -> int:
        """Tokens of the request once its image placeholder is expanded."""
        extra = (
            0 if request.image is None else self.spec.num_image_tokens(*request.image.image_size)
        )
        return int(request.input_ids.shape[0]) + max(extra - 1, 0)

    def batches(
        self, requests: Sequence[ScoringRequest]
    ) -> Iterator[tuple[list[int], list[OptionScores]]]:
        """(request indices, their scores) per forward pass, as each finishes."""
        lengths = [self.expanded_length(request) for request in requests]
        for indices in plan_batches(lengths, self.batch_size, self.pad_multiple):
            chunk = [requests[index] for index in indices]
            logits = answer_logits(self.loaded.model, self.batch(chunk))
            yield indices, scores_from_answer_logits(logits, chunk)

    def score(self, requests: Sequence[ScoringRequest]) -> list[OptionScores]:
        """Option log-probs and top-k tokens per request, in request order."""
        results: dict[int, OptionScores] = {}
        for indices, scores in self.batches(requests):
            results.update(zip(indices, scores, strict=True))
        return [results[index] for index in range(len(requests))]

    def stream(
        self, requests: Sequence[ScoringRequest], threshold: float = MASS_THRESHOLD
    ) -> Iterator[tuple[list[int], list[ScoredItem]]]:
        """`batches` with the raw-mass rule applied: what `cvs-eval` writes as it goes."""
        for indices, scores in self.batches(requests):
            yield (
                indices,
                [
                    judge_option_mass(s, requests[i].option_token_ids, threshold)
                    for i, s in zip(indices, scores, strict=True)
                ],
            )

    def score_items(
        self, requests: Sequence[ScoringRequest], threshold: float = MASS_THRESHOLD
    ) -> list[ScoredItem]:
        """`score`, then the raw-mass rule: low-mass items are kept with a reason, not scored."""
        return [
            judge_option_mass(scores, request.option_token_ids, threshold)
            for scores, request in zip(self.score(requests), requests, strict=True)
        ]

    def score_continuations(
        self, requests: Sequence[ScoringRequest], continuations: Sequence[Sequence[int]]
    ) -> NDArray[np.float64]:
        """(requests, continuations) summed log-likelihood of each continuation's tokens after
        each request's prompt (e.g. a country's name after "… It is from"). The prompt runs
        once per request; the continuations run in batches on copies of its cache."""
        if not continuations or any(len(tokens) == 0 for tokens in continuations):
            raise ValueError("every continuation needs at least one token")
        totals = np.zeros((len(requests), len(continuations)), dtype=np.float64)
        firsts = torch.tensor([tokens[0] for tokens in continuations], dtype=torch.long)
        longer = [index for index, tokens in enumerate(continuations) if len(tokens) > 1]
        for row, request in enumerate(requests):
            cache, logits, past_mask = self._prefix_cache(request, 0)
            totals[row] = torch.log_softmax(logits, dim=-1)[firsts].numpy()
            for start in range(0, len(longer), self.batch_size):
                chosen = longer[start : start + self.batch_size]
                totals[row, chosen] += self._continuation_tail(
                    cache, past_mask, [continuations[i] for i in chosen]
                )
        return totals

    # ------------------------------------------------------------------------ cache helpers

    def _prefix_cache(
        self, request: ScoringRequest, pads: int
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Run a prompt left-padded by `pads` tokens: (key/value cache, (vocab,) float64 logits
        at its last token, (1, pads + tokens) attention mask of what the cache holds)."""
        expanded = expand_image_placeholder(request, self.spec)
        batch = build_batch(
            [request],
            self.spec,
            pad_token_id=self._pad,
            dtype=self._dtype,
            device=self._device,
            pad_multiple=expanded.shape[0] + pads,
        )
        model = self.loaded.model
        with torch.no_grad():
            output = model.model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                pixel_values=batch.pixel_values,
                image_sizes=batch.image_sizes,
                use_cache=True,
            )
            logits = head_logits_float64(model, output.last_hidden_state[0, -1]).cpu()
        return output.cache, logits, batch.attention_mask

    def _extend(self, cache: Any, past_mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, new, vocab) float64 logits of `tokens` (batch, new) run after a cached prefix
        (its batch dimension already matching) whose attention mask is `past_mask` (1, past).
        Right padding in `tokens` is harmless: causal attention never lets a real token see a
        later pad."""
        batch, new = tokens.shape
        first = int(past_mask.sum())  # position of the first new token
        mask = torch.cat(
            [past_mask.expand(batch, -1), torch.ones((batch, new), dtype=past_mask.dtype)], dim=1
        )
        positions = torch.arange(first, first + new, dtype=torch.long).expand(batch, new)
        model = self.loaded.model
        with torch.no_grad():
            output = model.model(
                input_ids=tokens.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions.to(self._device),
                cache=cache,
                use_cache=True,
            )
            return head_logits_float64(model, output.last_hidden_state).cpu()

    def _continuation_tail(
        self, cache: Any, past_mask: torch.Tensor, continuations: Sequence[Sequence[int]]
    ) -> NDArray[np.float64]:
        """(len(continuations),) summed log-probs of tokens 2.. of each continuation."""
        width = max(len(tokens) for tokens in continuations) - 1
        inputs = torch.full((len(continuations), width), self._pad, dtype=torch.long)
        targets = torch.zeros((len(continuations), width), dtype=torch.long)
        valid = torch.zeros((len(continuations), width), dtype=torch.bool)
        for index, tokens in enumerate(continuations):
            inputs[index, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            targets[index, : len(tokens) - 1] = torch.tensor(tokens[1:])
            valid[index, : len(tokens) - 1] = True
        repeated = copy.deepcopy(cache)
        repeated.batch_repeat_interleave(len(continuations))
        logprobs = torch.log_softmax(self._extend(repeated, past_mask, inputs), dim=-1)
        picked = logprobs.gather(-1, targets[..., None])[..., 0]  # (continuations, width)
        return torch.where(valid, picked, 0.0).sum(dim=-1).numpy()
