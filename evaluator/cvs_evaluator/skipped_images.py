"""Images a run could not use: their table, the run folder's record of them, and the refusal of
a run that has none left.

Why a file of its own (`RUN/skipped_images.json`) and not rows in the store: a skipped image has
no scores, and a store row is reused on resume, while a skip must be decided again by every run
(the file may have been fixed, or `CVS_MAX_IMAGE_PIXELS` raised). Every image run rewrites the
file (a run without images removes it), so it always lists the last run's skips: a resumed run
re-checks the skipped images, scores nothing it already stored, and reports the skips again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from cvs_evaluator.durable import write_json
from cvs_evaluator.images import SkippedImage, max_image_pixels

SKIPPED_FILE = "skipped_images.json"
"""The run folder's list of skipped images."""
SKIPPED_COLUMNS: tuple[str, ...] = ("image_id", "country", "category", "reason", "detail")
"""Columns of `skipped_table` (and of the report's skipped-images table)."""
SKIPPED_LISTED = 10
"""Skipped images an `AllImagesSkipped` message names (the rest are counted)."""


class AllImagesSkipped(ValueError):
    """Every image of an image-only run was skipped: nothing is left to score."""


def skipped_table(skipped: Iterable[SkippedImage]) -> pd.DataFrame:
    """One row per skipped image (the first reason seen for an image id), in the given order."""
    rows: dict[str, dict[str, str]] = {}
    for item in skipped:
        rows.setdefault(
            item.record.id,
            {
                "image_id": item.record.id,
                "country": item.record.country,
                "category": item.record.category,
                "reason": item.reason,
                "detail": item.detail,
            },
        )
    return pd.DataFrame(list(rows.values()), columns=list(SKIPPED_COLUMNS))


def all_skipped_error(skipped: Sequence[SkippedImage]) -> AllImagesSkipped:
    """The one-line error of a run whose every image was skipped: each image with its reason
    (the first `SKIPPED_LISTED`, then a count)."""
    by_id: dict[str, SkippedImage] = {}
    for item in skipped:
        by_id.setdefault(item.record.id, item)
    first = list(by_id.values())
    listed = [
        f"{item.record.id} {item.reason} ({item.detail.removeprefix(f'{item.record.path}: ')})"
        for item in first[:SKIPPED_LISTED]
    ]
    more = f"; and {len(first) - SKIPPED_LISTED} more" if len(first) > SKIPPED_LISTED else ""
    return AllImagesSkipped(
        f"every image of the run was skipped ({len(first)}), nothing to score: "
        + "; ".join(listed)
        + more
    )


def refuse_if_all_skipped(
    candidates: set[str], skipped: Sequence[SkippedImage], *, has_text: bool
) -> None:
    """`AllImagesSkipped` when every image id in `candidates` (the images the run wanted) was
    skipped and no text condition (`has_text`) gives the run rows."""
    if has_text or not candidates:
        return
    if candidates <= {item.record.id for item in skipped}:
        raise all_skipped_error(skipped)


def record_skipped(run_dir: Path, skipped: Sequence[SkippedImage] | None) -> None:
    """Write `RUN/skipped_images.json` (durably) for an image run; None: a run without images,
    whose folder must not keep an earlier run's list."""
    path = run_dir / SKIPPED_FILE
    if skipped is None:
        path.unlink(missing_ok=True)
        return
    table = skipped_table(skipped)
    write_json(path, {"pixel_limit": max_image_pixels(), "images": table.to_dict("records")})


def read_skipped(run_dir: Path) -> pd.DataFrame | None:
    """The table `record_skipped` wrote into `run_dir` (None: the run had no images)."""
    path = run_dir / SKIPPED_FILE
    if not path.is_file():
        return None
    images = json.loads(path.read_text(encoding="utf-8")).get("images", [])
    return pd.DataFrame(images, columns=list(SKIPPED_COLUMNS))
