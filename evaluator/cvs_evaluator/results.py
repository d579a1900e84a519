"""The result store: one JSON line per scored item, written as items finish, resumable.

A run killed at any point (SIGKILL included) loses at most the line being written: lines are
flushed and fsynced per batch, a torn last line is ignored on reading, and a resumed run skips
the item ids already stored. Each row carries every key a resumable store needs (item id,
model, engine, precision, prompt template version) besides the scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

ROW_SCHEMA = 1
"""Bumped when a row's fields change meaning."""


@dataclass(frozen=True)
class ResultRow:
    """One item's result."""

    item_id: str
    """Unique within a store: template version, family, condition, country, image, question."""
    model: str
    """Model family name (`smol`, `yi34b`, …)."""
    engine: str
    """`torch` (the reference), `ort`, `trt`."""
    precision: str
    """`fp32`, `fp16`, `bf16`, `int8-…`."""
    template_version: str
    """The prompt template's version."""
    condition: str
    """`text`, `image` or `image+country`."""
    country: str
    """ISO3 of the persona's or the image's country."""
    question: str
    """WVS question id."""
    section: str
    """The question's section."""
    image: str
    """Image id; "" for `text`."""
    group_key: str
    """Items sharing image, condition, country and instructions."""
    option_codes: list[int]
    """WVS answer codes in option order."""
    option_logprobs: list[float]
    """Full-vocabulary log-probs of the option letters at the answer position."""
    raw_mass: float
    """Probability mass on the letters together."""
    status: str
    """`scored` or `low_mass` (kept, not scored)."""
    reason: str
    """Why not scored; empty when scored."""
    distribution: list[float] | None
    """Renormalised over the letters; None when not scored."""
    topk_distribution: list[float] | None
    """The top-20 variant; None when not scored or no letter is in the top 20."""
    schema: int = ROW_SCHEMA
    """`ROW_SCHEMA` when written."""


class ResultStore:
    """Append-only JSON-lines file of `ResultRow`s."""

    def __init__(self, path: Path) -> None:
        self.path = path
        """The `.jsonl` file."""

    def rows(self) -> Iterator[dict[str, Any]]:
        """Stored rows as dicts; a torn last line (a killed writer) is skipped."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    return  # the writer died mid-line
                yield json.loads(line)

    def done_ids(self) -> set[str]:
        """Item ids already stored."""
        return {row["item_id"] for row in self.rows()}

    def append(self, rows: Iterable[ResultRow]) -> None:
        """Write rows and make them durable before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with self.path.open("a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(asdict(row), separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def frame(self) -> pd.DataFrame:
        """All stored rows as a table (one row per item)."""
        return pd.DataFrame(list(self.rows()))

    def _drop_torn_tail(self) -> None:
        """Cut a partial last line left by a killed writer, so appends start on a fresh line."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            handle.truncate(data.rfind(b"\n") + 1)


def model_long(rows: pd.DataFrame, *, variant: str = "distribution") -> pd.DataFrame:
    """Scored rows → the metrics' long table (model, condition, country, question, image,
    option, prob). `variant` is `distribution` (renormalised over the letters) or
    `topk_distribution` (letters outside the top 20 get 0; items without one are left out)."""
    scored = rows[(rows["status"] == "scored") & rows[variant].notna()]
    keys = ["model", "condition", "country", "question", "image"]
    exploded = scored[[*keys, "option_codes", variant]].explode(["option_codes", variant])
    out = exploded.rename(columns={"option_codes": "option", variant: "prob"})
    out["option"] = out["option"].astype("int64")
    out["prob"] = out["prob"].astype("float64")
    return out.reset_index(drop=True)
