"""The reports' figures, drawn with matplotlib's Agg canvas and inlined as base64 PNG.

No pyplot: each figure is a `matplotlib.figure.Figure` on its own `FigureCanvasAgg`, so drawing
a report neither needs a display nor touches global plotting state, and pages stay one
self-contained file (`data:image/png;base64,…`, nothing fetched at view time).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LABEL_CHARS = 38
"""Longest axis label (section names are long; the tables carry them in full)."""
DPI = 100
"""Pixels per inch of the PNGs."""


@dataclass(frozen=True)
class InlineFigure:
    """One figure ready to inline in a page."""

    name: str
    """Short identifier (HTML element id)."""
    title: str
    """Caption shown under the figure."""
    alt: str
    """Text alternative for the image."""
    png: bytes
    """The PNG file's bytes."""

    @property
    def data_uri(self) -> str:
        """`data:image/png;base64,…` for an <img> src."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


def section_heatmap(
    sections: pd.DataFrame,
    condition: str,
    section_order: Sequence[str],
    countries: Sequence[str],
    *,
    limits: tuple[float, float],
) -> InlineFigure:
    """Mean similarity of one condition as a section × country grid, each cell annotated; an
    absent cell is grey. `limits` fixes the colour scale (the same for every condition)."""
    rows = sections.loc[sections["condition"] == condition]
    grid = (
        rows.pivot_table(index="section", columns="country", values="similarity")
        .reindex(index=list(section_order), columns=list(countries))
        .to_numpy(dtype=np.float64)
    )  # (sections, countries)
    figure = Figure(figsize=(2.8 + 0.75 * len(countries), 1.2 + 0.42 * len(section_order)), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_facecolor("#d9d9d9")
    image = axes.imshow(
        np.ma.masked_invalid(grid), cmap="viridis", vmin=limits[0], vmax=limits[1], aspect="auto"
    )
    for (row, column), value in np.ndenumerate(grid):
        if np.isfinite(value):
            shade = (value - limits[0]) / max(limits[1] - limits[0], 1e-12)
            colour = "black" if shade > 0.6 else "white"
            axes.text(
                column, row, f"{value:.3f}", ha="center", va="center", fontsize=7, color=colour
            )
    axes.set_xticks(range(len(countries)), list(countries), fontsize=8)
    axes.set_yticks(range(len(section_order)), [_short(s) for s in section_order], fontsize=7)
    axes.set_title(f"Mean similarity, {condition}", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    figure.tight_layout()
    return InlineFigure(
        name=f"heatmap-{_slug(condition)}",
        title=f"Mean similarity per section × country, {condition} condition (grey: no items)",
        alt=f"Heatmap of mean similarity per section and country, {condition} condition",
        png=_png(figure),
    )


def latency_bars(summaries: Mapping[str, Mapping[str, Any] | None]) -> InlineFigure:
    """Total seconds per stage, one bar per engine ("run", "compare") and stage."""
    present = {name: s for name, s in summaries.items() if s is not None}
    stages = list(dict.fromkeys(stage for s in present.values() for stage in s["stages"]))
    figure = Figure(figsize=(7.0, 1.4 + 0.35 * max(len(stages), 1) * len(present)), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    height = 0.8 / max(len(present), 1)
    positions = np.arange(len(stages), dtype=np.float64)
    for index, (name, summary) in enumerate(present.items()):
        totals = [summary["stages"].get(stage, {}).get("total_s", 0.0) for stage in stages]
        axes.barh(positions + index * height, totals, height=height, label=name)
    axes.set_yticks(positions + height * (len(present) - 1) / 2, stages, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("seconds (total over calls)")
    axes.legend(fontsize=8)
    axes.set_title("Time per stage", fontsize=10)
    figure.tight_layout()
    return InlineFigure(
        name="latency-stages",
        title="Total seconds per stage",
        alt="Horizontal bars of total seconds per stage for each engine",
        png=_png(figure),
    )


def logprob_scatter(compare: np.ndarray, run: np.ndarray, run_label: str) -> InlineFigure:
    """Every option log-prob of the run against the comparison engine's, with the diagonal."""
    figure = Figure(figsize=(4.8, 4.4), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = np.isfinite(compare) & np.isfinite(run)
    axes.scatter(compare[finite], run[finite], s=6, alpha=0.6)
    if finite.any():
        low = float(min(compare[finite].min(), run[finite].min()))
        high = float(max(compare[finite].max(), run[finite].max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=0.8)
    axes.set_xlabel("compare: option log-prob")
    axes.set_ylabel(f"{run_label}: option log-prob")
    axes.set_title("Option log-probs, item by item", fontsize=10)
    figure.tight_layout()
    return InlineFigure(
        name="logprob-scatter",
        title="Each option's log-prob on the run's engine against the comparison engine",
        alt="Scatter plot of option log-probs, run against compare, with the diagonal",
        png=_png(figure),
    )


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower())
