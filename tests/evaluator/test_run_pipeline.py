"""A run's plumbing: the parity sample, precision checks, the comparison target, template hash."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cvs_evaluator import prompts
from cvs_evaluator.prompts import PromptItem
from cvs_evaluator.run_pipeline import parity_sample
from cvs_evaluator.scorers import PrecisionError, check_precision, parse_compare_to


def _items(text: int, image: int) -> list[PromptItem]:
    base = PromptItem(
        question_id="Q1", section="S", country="DEU", condition="text", image_id="",
        image_category="", option_codes=(1, 2), letters=("A", "B"), text="t", prefix_chars=1,
        group_key="g", family="smol", template_version="v",
    )  # fmt: skip
    items = [replace(base, question_id=f"Q{i}") for i in range(text)]
    items += [replace(base, question_id=f"Q{i}", condition="image") for i in range(image)]
    return items


def test_a_small_run_is_compared_whole() -> None:
    items = _items(5, 3)
    assert parity_sample(items, 8) == [item.item_id for item in items]


def test_the_sample_takes_whole_pairs_in_run_order_and_is_seeded() -> None:
    items = _items(60, 60)  # Q0..Q59 asked as text and with an image
    sample = parity_sample(items, 16)
    assert len(sample) == len(set(sample)) == 16
    order = [item.item_id for item in items]
    assert sample == sorted(sample, key=order.index)
    chosen = [items[order.index(item_id)] for item_id in sample]
    by_question: dict[str, set[str]] = {}
    for item in chosen:
        by_question.setdefault(item.question_id, set()).add(item.condition)
    assert all(conditions == {"text", "image"} for conditions in by_question.values())
    assert len(by_question) == 8
    assert parity_sample(items, 16) == sample
    assert parity_sample(items, 16, seed=1) != sample


@pytest.mark.parametrize("precision", ["fp16", "int8-wo", "int8-banana"])
def test_torch_runs_the_fp32_reference_only(precision: str) -> None:
    with pytest.raises(PrecisionError, match="fp32 PyTorch reference"):
        check_precision("torch", precision)


def test_an_engine_precision_must_be_one_the_exporter_knows() -> None:
    check_precision("ort", "int8-wo")
    with pytest.raises(PrecisionError, match="unknown precision 'int8-banana'; engines offer"):
        check_precision("ort", "int8-banana")


def test_compare_to_parses_engine_and_precision() -> None:
    assert parse_compare_to("torch") == ("torch", "fp32")
    assert parse_compare_to("ort/int8-wo") == ("ort", "int8-wo")
    with pytest.raises(ValueError, match="unknown engine 'pytorch'"):
        parse_compare_to("pytorch/fp32")
    with pytest.raises(PrecisionError):
        parse_compare_to("torch/fp16")


def test_every_wording_constant_is_in_the_template_hash() -> None:
    """A new wording added to prompts.py without joining the hash would let rows built from
    different prompts be reused as if equal."""
    import hashlib

    from cvs_families import prompt_text

    wordings = {
        f"{module.__name__}.{name}": value
        for module in (prompts, prompt_text)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and name not in {"LETTERS"}
        and not name.endswith("VERSION")
    }  # fmt: skip
    missing = [name for name, value in wordings.items() if value not in prompts.TEMPLATE_TEXTS]
    assert not missing, f"wordings outside the template hash: {missing}"
    joined = "\0".join(prompts.TEMPLATE_TEXTS).encode()
    digest = hashlib.sha256(joined).hexdigest()[:12]
    assert f"cvs-prompt-{digest}" == prompts.PROMPT_TEMPLATE_VERSION
