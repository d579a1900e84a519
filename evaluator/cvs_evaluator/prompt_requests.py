"""The survey prompts a lower-precision build is judged and calibrated on, written as a file.

Why this module exists: `cvs-export build --precision int8-…` judges an engine on real survey
prompts and calibrates Q/DQ recipes on others, but prompts (question bank, countries, wording)
belong to the evaluator, which the export stage may not import. So the evaluator writes them
(`cvs-eval prompts --model M --out FILE`, `cvs_evaluator.cli_prompts`) as a request file
(`cvs_runtime.request_file`) and the export stage reads it (`cvs-export build --prompts FILE`).
The verdict set and the calibration set never share a question.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cvs_families.requests import ScoringRequest

VERDICT_REQUESTS = 96
"""Survey prompts each verdict is judged on (from one half of the value questions)."""
CALIBRATION_REQUESTS = 32
"""Survey prompts for Q/DQ calibration, SmoothQuant and the fp16 range check (the other half)."""


def survey_requests(
    spec: Any, tokenizer: Any, *, count: int, half: int, countries: Sequence[str] = ()
) -> list[ScoringRequest]:
    """`count` text-condition survey prompts: the value questions of one `half` (0: even
    positions, 1: odd, so calibration and judging never share a question), each with a study
    country in turn (grouped by country so a prefix cache serves them)."""
    from cvs_evaluator.countries import STUDY_COUNTRIES
    from cvs_evaluator.prompts import build_prompt_set, to_request
    from cvs_evaluator.questions import load_question_bank
    from cvs_evaluator.wvs import load_study_shares

    bank = load_question_bank()
    present = set(load_study_shares()["country"])
    wanted = [c for c in (countries or STUDY_COUNTRIES) if c in present]
    ordered = [q for questions in bank.by_section().values() for q in questions]
    chosen = ordered[half::2]
    # Spread `count` over the half's questions evenly, countries taking turns.
    picks = np.linspace(0, len(chosen) - 1, min(count, len(chosen))).round().astype(int)
    by_country: dict[str, list[Any]] = {}
    for n, index in enumerate(picks.tolist()):
        by_country.setdefault(wanted[n % len(wanted)], []).append(chosen[index])
    requests: list[ScoringRequest] = []
    for code, questions in by_country.items():
        built = build_prompt_set(questions, [code], "text", [], tokenizer, spec)
        requests.extend(to_request(item, tokenizer, spec, None) for item in built.items)
    return requests


def write_precision_prompts(
    model: str,
    out: Path,
    *,
    weights: Path | None = None,
    verdict: int = VERDICT_REQUESTS,
    calibration: int = CALIBRATION_REQUESTS,
) -> Path:
    """Write `model`'s verdict and calibration requests to `out`, tokenized by the checkpoint's
    own tokenizer and stamped with its fingerprint (the export stage refuses another's)."""
    from cvs_evaluator.prompts import PROMPT_TEMPLATE_VERSION
    from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint, load_tokenizer
    from cvs_families.registry import get_family
    from cvs_runtime.request_file import CALIBRATION_SET, VERDICT_SET, write_request_file

    spec = get_family(model)
    folder = ensure_checkpoint(spec, weights)
    tokenizer = load_tokenizer(spec, folder)
    return write_request_file(
        out,
        family=spec.name,
        checkpoint_fingerprint=checkpoint_fingerprint(folder),
        sets={
            VERDICT_SET: survey_requests(spec, tokenizer, count=verdict, half=0),
            CALIBRATION_SET: survey_requests(spec, tokenizer, count=calibration, half=1),
        },
        source={
            "writer": "cvs-eval prompts",
            "prompt_template_version": PROMPT_TEMPLATE_VERSION,
            "condition": "text",
            "question_halves": {VERDICT_SET: 0, CALIBRATION_SET: 1},
        },
    )
