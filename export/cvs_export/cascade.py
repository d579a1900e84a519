"""Shared-prefix ("cascade") attention: many suffixes against one batch-1 prefix cache, exactly.

Why this module exists: the suffix pass scores a group's questions against the key/value cache
of their shared prefix (image, persona, instructions). Copying that cache into every batch row
(`np.repeat`, then `repeat_kv` across head groups inside the graph) made the pass memory-bound:
≈ 1.4 s per 120-token suffix where its FLOPs need ≈ 0.3 s on smol. Here attention is split in
two and merged exactly, as FlashInfer's cascade and Hydragen do:

- *prefix*: every query of every row and every head of a key/value group attends to the batch-1
  prefix keys in ONE matrix product — queries laid out as (kv heads, batch·groups·seq, head dim)
  against keys (kv heads, head dim, prefix) — so the cache is read once, never expanded;
- *suffix*: each row's own causal attention over its suffix (small: seq × seq);
- *merge*: with m = max, l = Σ exp(s − m) and o = Σ exp(s − m)·v of each half,
  out = (o₁·e^{m₁−m} + o₂·e^{m₂−m}) / (l₁·e^{m₁−m} + l₂·e^{m₂−m}), m = max(m₁, m₂):
  softmax over the concatenation, computed in two pieces.

Every query row sees at least one real key in both halves (the prefix holds ≥ 1 token, and the
suffix is right-padded so a padded query still sees the row's first real token), so no
log-sum-exp term is −∞ and no 0 × NaN can reach a real token.

The function is registered in transformers' `AttentionInterface` under `CASCADE_ATTENTION`; the
suffix wrapper (`cvs_export.llava_next.SuffixPart`) switches a model to it while it runs and
passes the prefix cache as the keyword argument `PREFIX_KWARG`, which transformers forwards
from the language model's `forward` to every attention layer. Imports torch and transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import AttentionInterface

CASCADE_ATTENTION = "cvs_cascade"
"""The attention implementation name the suffix wrapper sets while it runs."""
PREFIX_KWARG = "cvs_prefix"
"""Keyword argument carrying the prefix cache: 2·layers tensors (1, kv heads, prefix, head dim),
key then value per layer."""


def cascade_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of suffix queries over [prefix cache; own suffix], merged by log-sum-exp.

    query (batch, heads, seq, d); key/value (batch, kv heads, seq, d), after rotary embedding;
    attention_mask (batch, 1, seq, seq) additive (causal and right padding). Returns
    (batch, seq, heads, d) as transformers' attention functions do.
    """
    prefix: Sequence[torch.Tensor] = kwargs[PREFIX_KWARG]
    layer = int(module.layer_idx)
    prefix_keys = prefix[2 * layer][0]  # (kv, prefix, d)
    prefix_values = prefix[2 * layer + 1][0]  # (kv, prefix, d)
    batch, heads, seq, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads

    def by_kv_head(t: torch.Tensor) -> torch.Tensor:
        # (batch, heads, seq, n) → (kv, batch·groups·seq, n): head h reads kv head h // groups
        n = t.shape[-1]
        grouped = t.reshape(batch, kv_heads, groups, seq, n).permute(1, 0, 2, 3, 4)
        return grouped.reshape(kv_heads, batch * groups * seq, n)

    def by_head(t: torch.Tensor) -> torch.Tensor:
        # the inverse: (kv, batch·groups·seq, n) → (batch, heads, seq, n)
        n = t.shape[-1]
        grouped = t.reshape(kv_heads, batch, groups, seq, n).permute(1, 0, 2, 3, 4)
        return grouped.reshape(batch, heads, seq, n)

    # Prefix half: one product per kv head over all rows, groups and positions.
    scores = torch.matmul(by_kv_head(query), prefix_keys.transpose(1, 2)) * scaling
    prefix_max = scores.amax(dim=-1, keepdim=True)  # (kv, bgs, 1)
    weights = torch.exp(scores - prefix_max)
    prefix_sum = weights.sum(dim=-1, keepdim=True)
    prefix_out = torch.matmul(weights, prefix_values)  # (kv, bgs, d), not yet normalised
    prefix_max, prefix_sum, prefix_out = (
        by_head(prefix_max),
        by_head(prefix_sum),
        by_head(prefix_out),
    )

    # Suffix half: each row's own keys, expanded across head groups (seq × seq: small).
    own_keys = key[:, :, None].expand(batch, kv_heads, groups, seq, dim).reshape(query.shape)
    own_values = value[:, :, None].expand(batch, kv_heads, groups, seq, dim).reshape(query.shape)
    scores = torch.matmul(query, own_keys.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    own_max = scores.amax(dim=-1, keepdim=True)  # (batch, heads, seq, 1)
    weights = torch.exp(scores - own_max)
    own_sum = weights.sum(dim=-1, keepdim=True)
    own_out = torch.matmul(weights, own_values)

    # Merge: softmax over the concatenation of both halves.
    top = torch.maximum(prefix_max, own_max)
    prefix_scale, own_scale = torch.exp(prefix_max - top), torch.exp(own_max - top)
    merged = (prefix_out * prefix_scale + own_out * own_scale) / (
        prefix_sum * prefix_scale + own_sum * own_scale
    )
    return merged.transpose(1, 2).contiguous(), None


AttentionInterface.register(CASCADE_ATTENTION, cascade_attention)


@contextlib.contextmanager
def cascade_attention_on(config: Any) -> Iterator[None]:
    """Switch a (text) config to cascade attention for the duration; restore it after."""
    previous = config._attn_implementation
    config._attn_implementation = CASCADE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def suffix_attention_mask(suffix_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, seq) 1 at real tokens (right padding) → (batch, 1, seq, seq) additive mask: a
    query sees earlier-or-same real suffix tokens; the prefix is handled separately."""
    seq = suffix_mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=suffix_mask.device).tril()
    allowed = causal[None] & (suffix_mask[:, None, :] != 0)  # (batch, seq, seq)
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=suffix_mask.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
