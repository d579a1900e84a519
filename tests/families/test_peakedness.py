"""Tiny models answer survey prompts peaked and varied, so parity checks on them can fail.

A near-uniform option distribution hides a broken engine; a constant favourite letter hides
one that ignores the prompt. On 30 survey prompts built from real WVS questions (even-numbered
ones: built models calibrate on odd-numbered questions and other persona wordings), each tiny
family must put a mean top-option probability of at least 0.6 on the letters, and no letter may
be the top option on more than half the prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from cvs_families.checkpoint import ensure_checkpoint, letter_token_ids, load_model
from cvs_families.checkpoint_build import is_calibration_variable
from cvs_families.prompt_text import ANSWER_PREFIX, LETTERS
from cvs_families.registry import get_family
from cvs_families.tokenizers_offline import codebook_items

COUNTRIES = ("Japan", "Egypt", "Peru")
"""Personas of the test prompts: none of them is a calibration country."""


def _test_items() -> list[tuple[str, str, list[str]]]:
    items = [
        (variable, wordings[-1], labels)
        for variable, wordings, labels in codebook_items()
        if not is_calibration_variable(variable)
    ]
    step = max(1, len(items) // 30)
    return items[::step][:30]


def _prompt(tokenizer: Any, country: str, question: str, labels: list[str]) -> str:
    lettered = "\n".join(f"({LETTERS[i]}) {label}" for i, label in enumerate(labels))
    text = f"I am from {country}. {question}\n{lettered}"
    messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{rendered} {ANSWER_PREFIX}"


def _option_distributions(name: str) -> list[np.ndarray]:
    spec = get_family(name)
    loaded = load_model(spec, ensure_checkpoint(spec))
    letters = letter_token_ids(loaded.tokenizer, 10)
    distributions = []
    for index, (_, question, labels) in enumerate(_test_items()):
        country = COUNTRIES[index % len(COUNTRIES)]
        ids = loaded.tokenizer(_prompt(loaded.tokenizer, country, question, labels)).input_ids
        with torch.no_grad():
            logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        option_logits = logits[letters[: len(labels)]]
        distributions.append(torch.softmax(option_logits, dim=-1).numpy())
    return distributions


@pytest.fixture(scope="module", params=["tiny-vicuna", "tiny-yi", "tiny-qwen"])
def distributions(request: pytest.FixtureRequest) -> list[np.ndarray]:
    return _option_distributions(str(request.param))


def test_the_test_prompts_are_thirty_varied_questions() -> None:
    items = _test_items()
    assert len(items) == 30
    assert len({variable for variable, _, _ in items}) == 30
    assert {len(labels) for _, _, labels in items} >= {2, 4}
    assert not any(is_calibration_variable(variable) for variable, _, _ in items)


def test_mean_top_option_probability_is_at_least_0_6(distributions: list[np.ndarray]) -> None:
    tops = [float(d.max()) for d in distributions]
    assert np.mean(tops) >= 0.6, f"mean top option probability {np.mean(tops):.3f}"


def test_no_letter_is_top_on_more_than_half_the_prompts(distributions: list[np.ndarray]) -> None:
    winners = np.bincount([int(d.argmax()) for d in distributions], minlength=10)
    assert winners.max() <= len(distributions) / 2, f"top letters {winners.tolist()}"
    assert (winners > 0).sum() >= 3, f"top letters {winners.tolist()}"


def test_the_answer_depends_on_the_question_not_only_its_length(
    distributions: list[np.ndarray],
) -> None:
    # Among prompts with the same number of options, the winning letter still varies.
    by_count: dict[int, set[int]] = {}
    for d in distributions:
        by_count.setdefault(len(d), set()).add(int(d.argmax()))
    most_common = max(by_count, key=lambda n: sum(len(d) == n for d in distributions))
    assert len(by_count[most_common]) >= 2, by_count
