"""The scheduler: a whole run's requests → option scores, each image and prefix computed once.

It knows nothing of surveys: requests come in (token ids, a prepared image, option token ids,
a group key), batches of `OptionScores` go out as they finish, each with its request indices.

- **Grouping.** Requests with one group key share a token prefix (image, persona,
  instructions); the split is the group's checked shared prefix (`chain.group_split`).
- **Order.** Groups are taken image by image (text groups first), so an image's features are
  needed by consecutive groups and its cache entry is never evicted while it is still wanted;
  within a group all suffixes run back to back against one prefix cache.
- **Caches.** Image features by (engine, image content hash) and prefix key/value caches by
  (engine, prefix tokens, image content hash), both least recently used under byte budgets,
  both surviving across `run` calls. A budget of 0 turns a cache off: then the vision and prefix
  work is redone for every suffix batch (what the runtime did before the scheduler).
- **Batches.** Suffixes are right-padded to a width bucket and batched within it; rows per
  batch follow from the activation budget at the group's prefix length
  (`budgets.suffix_row_bytes`), capped by `Budgets.max_batch`. A suffix is computed at the same
  width, against the same prefix cache, whatever its batch, order, or cache state.
- **Refusals before work.** `plan` checks every group against the budgets first: a prefix or
  image that no cache budget could hold, or a suffix row larger than the activation budget, is
  a `BudgetError` naming the bytes needed — before any part runs.
- **Timing.** Every stage (vision, embedding, prefix, suffix, scores) is timed in `StageTimes`.

Numpy only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cvs_families.requests import ScoringRequest
from cvs_families.scores import OptionScores, option_scores_from_logits
from cvs_runtime.budgets import (
    BudgetError,
    Budgets,
    default_budgets,
    format_size,
    image_feature_bytes,
    prefix_cache_bytes,
    prefix_pass_bytes,
    rows_for_budget,
    suffix_row_bytes,
)
from cvs_runtime.caches import ByteBudgetLRU, content_hash
from cvs_runtime.chain import (
    embed_ids,
    expanded_split,
    group_split,
    image_features,
    run_prefix,
    run_suffixes,
    splice_image,
    suffix_width,
)
from cvs_runtime.parts import PartRunner

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec, PreparedImage

STAGES = ("vision", "embedding", "prefix", "suffix", "scores")
"""The timed stages, in the order they run."""


class MissingSuffixPart(ValueError):
    """The engine predates the suffix part (shared-prefix attention); it must be rebuilt."""


@dataclass
class StageTimes:
    """Seconds, calls and tokens per stage over everything a scheduler ran."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    """Wall time per stage."""
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    """Part calls (or reductions) per stage."""
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    """Positions computed per stage: image tokens for vision, prefix tokens, real suffix
    tokens (padding not counted), scored items for `scores`."""
    attended: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    """Σ over computed positions of the keys each attends to (prefix and suffix stages): with
    `tokens`, what a FLOP count needs."""
    padded_tokens: int = 0
    """Suffix positions computed that were padding."""
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    """Seconds of every call per stage, in call order (for percentiles)."""

    @contextmanager
    def timed(self, stage: str, tokens: int = 0, attended: int = 0) -> Iterator[None]:
        """Time one call of `stage` that computes `tokens` positions attending to `attended`
        keys in all."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[stage] += elapsed
            self.samples[stage].append(elapsed)
            self.calls[stage] += 1
            self.tokens[stage] += tokens
            self.attended[stage] += attended

    def to_json(self) -> dict[str, Any]:
        """Plain data for reports."""
        return {
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "calls": dict(self.calls),
            "tokens": dict(self.tokens),
            "attended": dict(self.attended),
            "padded_tokens": self.padded_tokens,
        }


@dataclass(frozen=True)
class SuffixBatch:
    """Rows scored together: one group, one width bucket."""

    members: tuple[int, ...]
    """Request indices, in the order the rows are laid out."""
    width: int
    """Padded suffix width."""


@dataclass(frozen=True)
class GroupWork:
    """One group's planned work."""

    key: str
    """The group key."""
    members: tuple[int, ...]
    """Request indices of the group, in request order."""
    image: PreparedImage | None
    """The group's image (one per group), or None."""
    image_key: str
    """Content hash of the image ('' without one)."""
    split: int
    """Prompt tokens of the shared prefix."""
    prefix_tokens: int
    """Positions of the prefix once the image is spliced in."""
    prefix_key: str
    """Cache key of the prefix (engine, tokens, image content)."""
    batches: tuple[SuffixBatch, ...]
    """The suffix batches, each within the activation budget."""


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of one finished batch."""

    indices: tuple[int, ...]
    """Request indices (positions in the `run` call's sequence)."""
    scores: tuple[OptionScores, ...]
    """Their scores, in the same order."""


class Scheduler:
    """Scores requests on one engine's parts with image and prefix caches (see module doc)."""

    def __init__(
        self,
        parts: PartRunner,
        spec: FamilySpec,
        *,
        pad_token_id: int,
        budgets: Budgets | None = None,
        engine_id: str = "",
    ) -> None:
        if "suffix" not in parts.part_names:
            raise MissingSuffixPart(
                f"this {spec.name} engine has no suffix part (shared-prefix attention, added "
                f"after it was built); rebuild it: cvs-export build --model {spec.name} "
                "--precision <its precision> (or make engines)"
            )
        self.parts = parts
        """The engine."""
        self.spec = spec
        """The family (numpy half: packing, geometry)."""
        self.pad_token_id = pad_token_id
        """Token id at padded positions (masked)."""
        self.budgets = budgets or default_budgets()
        """Cache and activation budgets."""
        self.engine_id = engine_id
        """Identifies the engine in cache keys (e.g. its manifest hash)."""
        self.times = StageTimes()
        """Time per stage, over every call."""
        self.image_cache: ByteBudgetLRU[NDArray[np.float32]] = ByteBudgetLRU(
            "image", self.budgets.image_cache_bytes
        )
        """Packed image features by engine and image content."""
        self.prefix_cache: ByteBudgetLRU[dict[str, Any]] = ByteBudgetLRU(
            "prefix", self.budgets.prefix_cache_bytes
        )
        """Prefix key/value caches by engine, prefix tokens and image content."""

    # Planning -------------------------------------------------------------------------------

    def plan(self, requests: Sequence[ScoringRequest]) -> list[GroupWork]:
        """Every group's work, in the order it will run; BudgetError before any work when a
        budget cannot hold what one group needs."""
        members: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            request.check_placeholder(self.spec.image_token_id)
            members.setdefault(request.group_key, []).append(index)
        hashes: dict[int, str] = {}
        groups = [self._plan_group(key, idx, requests, hashes) for key, idx in members.items()]
        firsts = {key: idx[0] for key, idx in members.items()}
        groups.sort(key=lambda g: (g.image_key, firsts[g.key]))
        return groups

    def _plan_group(
        self,
        key: str,
        indices: list[int],
        requests: Sequence[ScoringRequest],
        hashes: dict[int, str],
    ) -> GroupWork:
        group = [requests[i] for i in indices]
        image = group[0].image
        if any(r.image is not image for r in group):
            image_keys = {self._image_key(r.image, hashes) for r in group}
            if len(image_keys) > 1:
                raise ValueError(f"group {key!r} mixes images")
        image_key = self._image_key(image, hashes)
        split = group_split(group)
        prefix_tokens = expanded_split(group[0], self.spec, split)
        prefix_key = content_hash(self.engine_id, group[0].input_ids[:split], image_key)
        by_width: dict[int, list[int]] = {}
        for index, request in zip(indices, group, strict=True):
            tokens = expanded_split(request, self.spec, request.input_ids.shape[0]) - prefix_tokens
            by_width.setdefault(suffix_width(tokens), []).append(index)
        image_tokens = None if image is None else self.spec.num_image_tokens(*image.image_size)
        self.check_budgets(key, prefix_tokens, image_tokens, max(by_width))
        batches = []
        for width in sorted(by_width):
            rows = rows_for_budget(self.budgets, suffix_row_bytes(self.spec, prefix_tokens, width))
            chosen = by_width[width]
            batches += [
                SuffixBatch(tuple(chosen[i : i + rows]), width) for i in range(0, len(chosen), rows)
            ]
        return GroupWork(
            key=key,
            members=tuple(indices),
            image=image,
            image_key=image_key,
            split=split,
            prefix_tokens=prefix_tokens,
            prefix_key=prefix_key,
            batches=tuple(batches),
        )

    def _image_key(self, image: PreparedImage | None, hashes: dict[int, str]) -> str:
        if image is None:
            return ""
        if id(image) not in hashes:
            sizes = np.asarray(image.image_size, dtype=np.int64)
            hashes[id(image)] = content_hash(self.engine_id, image.pixel_values, sizes)
        return hashes[id(image)]

    def check_budgets(
        self, key: str, prefix_tokens: int, image_tokens: int | None, suffix_tokens: int
    ) -> None:
        """BudgetError (naming the bytes needed) unless the budgets can hold group `key`'s
        prefix cache, its prefix pass, its image features and one row of its widest suffix."""
        budgets = self.budgets
        needed = prefix_cache_bytes(self.spec, prefix_tokens)
        if 0 < budgets.prefix_cache_bytes < needed:
            raise BudgetError(
                f"the prefix cache budget {format_size(budgets.prefix_cache_bytes)} cannot hold "
                f"one prefix: group {key!r} has {prefix_tokens} prefix tokens, which need "
                f"{format_size(needed)} (--prefix-cache-bytes {needed} or more)"
            )
        if image_tokens is not None:
            features = image_feature_bytes(self.spec, image_tokens)
            if 0 < budgets.image_cache_bytes < features:
                raise BudgetError(
                    f"the image cache budget {format_size(budgets.image_cache_bytes)} cannot hold "
                    f"one image's features: {image_tokens} image tokens need "
                    f"{format_size(features)} (--image-cache-bytes {features} or more)"
                )
        passing = prefix_pass_bytes(self.spec, prefix_tokens)
        if passing > budgets.activation_bytes:
            raise BudgetError(
                f"the activation budget {format_size(budgets.activation_bytes)} cannot hold the "
                f"prefix pass of group {key!r} ({prefix_tokens} tokens): it needs "
                f"{format_size(passing)} (--activation-bytes {passing} or more)"
            )
        row = suffix_row_bytes(self.spec, prefix_tokens, suffix_width(suffix_tokens))
        if row > budgets.activation_bytes:
            raise BudgetError(
                f"the activation budget {format_size(budgets.activation_bytes)} cannot hold one "
                f"suffix row of group {key!r} ({suffix_tokens} tokens over a {prefix_tokens}-"
                f"token prefix): it needs {format_size(row)} (--activation-bytes {row} or more)"
            )

    # Running --------------------------------------------------------------------------------

    def run(self, requests: Sequence[ScoringRequest]) -> Iterator[ScoredBatch]:
        """Scores batch by batch as they finish (group by group); indices into `requests`."""
        for group in self.plan(requests):
            for batch in group.batches:
                yield self._score_batch(group, batch, requests)

    def score(self, requests: Sequence[ScoringRequest]) -> list[OptionScores]:
        """Every request's scores, in request order."""
        results: dict[int, OptionScores] = {}
        for batch in self.run(requests):
            results.update(zip(batch.indices, batch.scores, strict=True))
        return [results[i] for i in range(len(requests))]

    def _score_batch(
        self, group: GroupWork, batch: SuffixBatch, requests: Sequence[ScoringRequest]
    ) -> ScoredBatch:
        features = self._features(group)
        cache = self._prefix(group, requests[group.members[0]], features)
        chosen = [requests[i] for i in batch.members]
        tails = [r.input_ids[group.split :] for r in chosen]
        with self.times.timed("embedding"):
            embedded = embed_ids(self.parts, tails, pad_token_id=self.pad_token_id)
        suffixes = [
            splice_image(e, tail, self.spec, features)
            for e, tail in zip(embedded, tails, strict=True)
        ]
        lengths = [s.shape[0] for s in suffixes]
        real = sum(lengths)
        self.times.padded_tokens += batch.width * len(suffixes) - real
        # token i of a suffix attends to the whole prefix and suffix tokens 0..i
        attended = sum(n * group.prefix_tokens + n * (n + 1) // 2 for n in lengths)
        with self.times.timed("suffix", real, attended):
            logits = run_suffixes(self.parts, cache, group.prefix_tokens, suffixes, batch.width)
        with self.times.timed("scores", len(chosen)):
            scores = tuple(
                option_scores_from_logits(row, r.option_token_ids)
                for row, r in zip(logits, chosen, strict=True)
            )
        return ScoredBatch(indices=batch.members, scores=scores)

    def _features(self, group: GroupWork) -> NDArray[np.float32] | None:
        if group.image is None:
            return None
        features = self.image_cache.get(group.image_key)
        if features is None:
            tokens = self.spec.num_image_tokens(*group.image.image_size)
            with self.times.timed("vision", tokens):
                features = image_features(self.parts, self.spec, group.image)
            self.image_cache.put(group.image_key, features, features.nbytes)
        return features

    def _prefix(
        self, group: GroupWork, first: ScoringRequest, features: NDArray[np.float32] | None
    ) -> dict[str, Any]:
        cache = self.prefix_cache.get(group.prefix_key)
        if cache is not None:
            return cache
        head = first.input_ids[: group.split]
        with self.times.timed("embedding"):
            (embedded,) = embed_ids(self.parts, [head], pad_token_id=self.pad_token_id)
        prefix = splice_image(embedded, head, self.spec, features)
        tokens = prefix.shape[0]
        with self.times.timed("prefix", tokens, tokens * (tokens + 1) // 2):
            cache = run_prefix(self.parts, self.spec, prefix)
        self.prefix_cache.put(group.prefix_key, cache, sum(v.nbytes for v in cache.values()))
        return cache


def score_with_parts(
    parts: PartRunner,
    spec: FamilySpec,
    requests: Sequence[ScoringRequest],
    *,
    pad_token_id: int,
    budgets: Budgets | None = None,
) -> list[OptionScores]:
    """Option scores for `requests` through the engine parts (a one-off scheduler)."""
    scheduler = Scheduler(parts, spec, pad_token_id=pad_token_id, budgets=budgets)
    return scheduler.score(requests)
