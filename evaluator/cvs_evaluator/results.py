"""The result store: one JSON line per scored item, written as items finish, resumable.

A run killed at any point (SIGKILL included) loses at most the line being written: lines are
flushed and fsynced per batch, a torn last line is ignored on reading, and a resumed run skips
the item ids already stored. Each row carries everything that determines its scores (model,
engine, precision, checkpoint fingerprint, engine manifest hash, prompt template hash, scoring
variant, image hash), so `cvs_evaluator.run_folder` can refuse to mix rows of different runs.

A store is never left failing every run: a damaged line or a duplicated item id (two writers
at once, possible before run folders were locked) raises `StoreError`, one line naming the file
and what to do, and `repair_store` rewrites the store keeping the first row of each item.
"""

from __future__ import annotations

import json
import os
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cvs_evaluator.durable import durable_path

ROW_SCHEMA = 2
"""Bumped when a row's fields change meaning. 2: rows carry what identifies their run
(checkpoint fingerprint, engine manifest hash, image hash, scoring variant)."""
DAMAGED_SUFFIX = ".damaged"
"""`repair_store` moves damaged lines to `<store>.damaged`, verbatim."""


class StoreError(ValueError):
    """A store that cannot be read as it is; the message is one line saying what to do."""


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
    """`prompts.PROMPT_TEMPLATE_VERSION`: a hash of the prompt template's wording."""
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
    checkpoint_fingerprint: str
    """Identifies the weights (config + weights + tokenizer), as in the engine manifest."""
    engine_manifest_sha256: str
    """sha256 of the engine's `manifest.json`; "" for `torch`."""
    image_sha256: str
    """sha256 of the image file's bytes; "" for `text`."""
    scoring_variant: str
    """How option scores were read (e.g. `letters-v1`)."""
    schema: int = ROW_SCHEMA
    """`ROW_SCHEMA` when written."""


def repair_command(store_path: Path) -> str:
    """The command that repairs the store at `store_path` (its run folder is the parent)."""
    return f"cvs-eval repair {shlex.quote(str(store_path.parent))}"


class ResultStore:
    """Append-only JSON-lines file of `ResultRow`s."""

    def __init__(self, path: Path) -> None:
        self.path = path
        """The `.jsonl` file."""

    def numbered_rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Stored rows with their 1-based line numbers. A torn last line (a killed writer) is
        skipped; any other line that is not a JSON object with an `item_id` raises
        `StoreError` naming the file and line."""
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    return  # the writer died mid-line
                problem = _row_problem(raw)
                if isinstance(problem, str):
                    raise StoreError(
                        f"{self.path} line {number} is not a JSON row ({problem}): run "
                        f"`{repair_command(self.path)}` to move damaged lines to "
                        f"{self.path.name}{DAMAGED_SUFFIX}, or start afresh with --fresh"
                    )
                yield number, problem

    def rows(self) -> Iterator[dict[str, Any]]:
        """Stored rows as dicts (see `numbered_rows` for what is skipped and what raises)."""
        for _, row in self.numbered_rows():
            yield row

    def unique_rows(self) -> list[dict[str, Any]]:
        """All stored rows; `StoreError` when an item id is stored more than once."""
        return [row for _, row in self.unique_numbered_rows()]

    def unique_numbered_rows(self) -> list[tuple[int, dict[str, Any]]]:
        """`numbered_rows` as a list; `StoreError` when an item id is stored more than once."""
        rows = list(self.numbered_rows())
        counts = Counter(row["item_id"] for _, row in rows)
        repeated = [item_id for item_id, count in counts.items() if count > 1]
        if repeated:
            extra = sum(counts[item_id] - 1 for item_id in repeated)
            raise StoreError(
                f"{self.path} holds {len(repeated)} item id(s) more than once ({extra} extra "
                f"row(s), e.g. {repeated[0]!r}; two cvs-eval processes wrote at once): run "
                f"`{repair_command(self.path)}` to keep the first row of each, or start "
                "afresh with --fresh"
            )
        return rows

    def done_ids(self) -> set[str]:
        """Item ids already stored (`StoreError` on a damaged line or a duplicated id). Which of
        them a resumed run may reuse is decided by `RunFolder.resume`, which also checks the
        image hashes."""
        return {row["item_id"] for row in self.unique_rows()}

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
        """All stored rows as a table (one row per item; `StoreError` as in `unique_rows`)."""
        return pd.DataFrame(self.unique_rows())

    def rewrite(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the store's contents by `rows`, atomically and durably."""
        with durable_path(self.path) as temporary, temporary.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")

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


def _row_problem(raw: bytes) -> dict[str, Any] | str:
    """The row a stored line holds, or what is wrong with it."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        return f"not UTF-8: {error.reason} at byte {error.start}"
    except json.JSONDecodeError as error:
        return f"{error.msg} at column {error.colno}"
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    if not isinstance(row.get("item_id"), str):
        return "no item_id"
    return row


@dataclass(frozen=True)
class RepairReport:
    """What `repair_store` did."""

    kept: int
    """Rows left in the store (one per item id)."""
    duplicates_dropped: int
    """Later rows of an item id already kept."""
    conflicting: int
    """Of those, rows that differed from the kept one (scores or any other field)."""
    damaged_moved: int
    """Lines that were not JSON rows, moved verbatim to `<store>.damaged` (a torn last line
    included)."""

    @property
    def changed(self) -> bool:
        """Whether the store was rewritten."""
        return bool(self.duplicates_dropped or self.damaged_moved)

    def summary(self, path: Path) -> str:
        """One line for the terminal."""
        if not self.changed:
            return f"{path}: nothing to repair ({self.kept} rows)"
        return (
            f"{path}: kept {self.kept} rows, dropped {self.duplicates_dropped} duplicate(s) "
            f"({self.conflicting} with different contents; the first row was kept), moved "
            f"{self.damaged_moved} damaged line(s) to {path.name}{DAMAGED_SUFFIX}"
        )


def repair_store(path: Path) -> RepairReport:
    """Rewrite the store at `path` keeping the first row of each item id, moving damaged lines
    (and a torn last line) verbatim to `<store>.damaged`. The damaged lines are made durable
    before the store is atomically replaced, so a kill loses nothing; a second repair finds
    nothing to do. Rows of an older schema are kept as they are (the run folder's identity
    check refuses them)."""
    if not path.exists():
        return RepairReport(kept=0, duplicates_dropped=0, conflicting=0, damaged_moved=0)
    kept: dict[str, dict[str, Any]] = {}
    damaged: list[bytes] = []
    duplicates = conflicting = 0
    with path.open("rb") as handle:
        for raw in handle:
            row = _row_problem(raw) if raw.endswith(b"\n") else "torn"
            if isinstance(row, str):
                damaged.append(raw if raw.endswith(b"\n") else raw + b"\n")
            elif row["item_id"] in kept:
                duplicates += 1
                conflicting += row != kept[row["item_id"]]
            else:
                kept[row["item_id"]] = row
    report = RepairReport(
        kept=len(kept),
        duplicates_dropped=duplicates,
        conflicting=conflicting,
        damaged_moved=len(damaged),
    )
    if damaged:
        with path.with_name(path.name + DAMAGED_SUFFIX).open("ab") as out:
            out.writelines(damaged)
            out.flush()
            os.fsync(out.fileno())
    if report.changed:
        ResultStore(path).rewrite(kept.values())
    return report


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
