"""The HTML pages: jinja2 templates shipped inside this package, filled from report tables.

A page is self-contained: styles inline, figures as data URIs, no script and nothing fetched
when it is opened (it reads the same from a file:// URL, a mail attachment or a web server).
Every page ends with the run's provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from cvs_evaluator.reports.figures import InlineFigure
from cvs_evaluator.reports.provenance import footer_facts
from cvs_evaluator.reports.tables import RenderedTable, ReportTable, render


@dataclass(frozen=True)
class Block:
    """One headed part of a page."""

    heading: str
    """The part's heading."""
    tables: list[ReportTable] = field(default_factory=list)
    """Its tables, in order."""
    figures: list[InlineFigure] = field(default_factory=list)
    """Its figures, shown above the tables."""
    text: str = ""
    """A sentence under the heading."""


@dataclass(frozen=True)
class _ShownBlock:
    heading: str
    tables: list[RenderedTable]
    figures: list[InlineFigure]
    text: str


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("cvs_evaluator.reports", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _shown(blocks: Sequence[Block]) -> list[_ShownBlock]:
    return [
        _ShownBlock(b.heading, [render(t) for t in b.tables], list(b.figures), b.text)
        for b in blocks
    ]


def alignment_page(
    *,
    title: str,
    facts: Sequence[tuple[str, str]],
    notes: Sequence[str],
    blocks: Sequence[Block],
    links: Sequence[tuple[str, str]],
    provenance: Mapping[str, Any],
) -> str:
    """alignment.html: run facts, notes (e.g. why a condition carries no information), then the
    blocks, then the provenance."""
    return (
        _environment()
        .get_template("alignment.html.j2")
        .render(
            title=title,
            facts=list(facts),
            notes=list(notes),
            blocks=_shown(blocks),
            links=list(links),
            provenance=footer_facts(provenance),
        )
    )


def parity_page(
    *,
    title: str,
    facts: Sequence[tuple[str, str]],
    question: str,
    answer: str,
    conclusion: str,
    passed: bool,
    rule: str,
    blocks: Sequence[Block],
    links: Sequence[tuple[str, str]],
    provenance: Mapping[str, Any],
) -> str:
    """parity.html: the question and its answer first, the verdict, then the evidence."""
    return (
        _environment()
        .get_template("parity.html.j2")
        .render(
            title=title,
            facts=list(facts),
            skipped="",
            question=question,
            answer_class="yes" if answer == "yes" else "no" if answer.startswith("no") else "",
            conclusion=conclusion,
            passed=passed,
            rule=rule,
            blocks=_shown(blocks),
            links=list(links),
            provenance=footer_facts(provenance),
        )
    )


def skipped_parity_page(
    *, title: str, reason: str, links: Sequence[tuple[str, str]], provenance: Mapping[str, Any]
) -> str:
    """parity.html when no comparison ran: says why."""
    return (
        _environment()
        .get_template("parity.html.j2")
        .render(
            title=title,
            skipped=reason,
            links=list(links),
            provenance=footer_facts(provenance),
        )
    )
