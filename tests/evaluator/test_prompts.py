"""Survey prompts: wording per condition, lettering, group prefixes, tokenization per family."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cvs_evaluator.images import ImageRecord
from cvs_evaluator.prompts import (
    CATEGORY_CUES,
    PROMPT_TEMPLATE_VERSION,
    PromptError,
    PromptItem,
    TooManyOptionsError,
    answer_letter_ids,
    build_items,
    build_prompt_set,
    encode_prompt,
    single_token_letter_count,
    to_request,
)
from cvs_evaluator.questions import Question, load_question_bank
from cvs_families.prompt_text import ANSWER_PREFIX, DEFAULT_CUE
from cvs_families.registry import get_family
from cvs_families.requests import ScoringRequest
from cvs_families.spec import FamilySpec, PreparedImage

FAMILIES = ("tiny-vicuna", "tiny-yi", "tiny-qwen", "smol")

QUESTIONS = (
    Question(
        id="Q1",
        text="How important is family in your life?",
        options=(
            (1, "Very important"),
            (2, "Rather important"),
            (3, "Not very important"),
            (4, "Not at all important"),
        ),
        ordinal=True,
        section="SOCIAL VALUES",
    ),
    Question(
        id="Q57",
        text="Generally speaking, would you say that most people can be trusted?",
        options=((1, "Most people can be trusted"), (2, "Need to be very careful")),
        ordinal=False,
        section="SOCIAL CAPITAL",
    ),
    Question(
        id="Q164",
        text="How important is God in your life? 1 means not at all, 10 means very.",
        options=tuple((code, str(code)) for code in range(1, 11)),
        ordinal=True,
        section="RELIGION",
    ),
)


def _image(image_id: str, country: str, name: str, category: str) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        path=Path("/unused"),
        country=country,
        country_name=name,
        category=category,
    )


IMAGES = (
    _image("NGA/tradition/a.jpg", "NGA", "Nigeria", "tradition"),
    _image("BRA/brands/b.jpg", "BRA", "Brazil", "brands"),
    _image("flags/vn.png", "VNM", "Viet Nam", "flag"),
)


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    """Each family's tokenizer, from its built checkpoint folder (built on first use)."""
    from transformers import AutoTokenizer

    from cvs_families.checkpoint import ensure_checkpoint

    return {
        name: AutoTokenizer.from_pretrained(ensure_checkpoint(get_family(name)))
        for name in FAMILIES
    }


def _prepared(spec: FamilySpec, seed: int) -> PreparedImage:
    rng = np.random.default_rng(seed)
    return spec.prepare_image(rng.integers(0, 256, (20 + 7 * seed, 31, 3), dtype=np.uint8))


def _requests(items: list[PromptItem], tokenizer: Any, spec: FamilySpec) -> list[ScoringRequest]:
    images = {image.id: _prepared(spec, index) for index, image in enumerate(IMAGES)}
    return [
        to_request(item, tokenizer, spec, images[item.image_id] if item.image_id else None)
        for item in items
    ]


# --------------------------------------------------------------------------- wording


@pytest.mark.parametrize("family", FAMILIES)
def test_text_prompt_names_the_country_and_has_no_image(family: str, tokenizers: dict) -> None:
    spec = get_family(family)
    items = build_items(QUESTIONS, ["NGA"], "text", [], tokenizers[family], spec)
    assert [item.question_id for item in items] == ["Q1", "Q57", "Q164"]
    for item in items:
        assert (item.country, item.condition, item.image_id, item.image_category) == (
            "NGA",
            "text",
            "",
            "",
        )
        assert "Nigeria" in item.text
        assert spec.image_token not in item.text
        assert item.text.endswith(ANSWER_PREFIX)
        assert item.template_version == PROMPT_TEMPLATE_VERSION
        assert item.family == family


@pytest.mark.parametrize("family", FAMILIES)
def test_image_prompt_puts_the_image_first_and_names_no_country(
    family: str, tokenizers: dict
) -> None:
    spec = get_family(family)
    items = build_items(QUESTIONS[:1], [], "image", IMAGES, tokenizers[family], spec)
    assert [(item.image_id, item.country) for item in items] == [
        (image.id, image.country) for image in IMAGES
    ]
    for item, image in zip(items, IMAGES, strict=True):
        assert item.text.count(spec.image_token) == 1
        user_text = item.text.index("Look at the image")
        assert item.text.index(spec.image_token) < user_text
        assert image.country_name not in item.text
        assert CATEGORY_CUES[image.category] in item.text
        assert item.image_category == image.category


def test_image_country_prompt_has_image_and_country(tokenizers: dict) -> None:
    spec = get_family("tiny-yi")
    items = build_items(
        QUESTIONS[:1], ["BRA"], "image+country", IMAGES, tokenizers["tiny-yi"], spec
    )
    assert [item.image_id for item in items] == ["BRA/brands/b.jpg"]  # only Brazil's image
    assert "Brazil" in items[0].text and items[0].text.count(spec.image_token) == 1


def test_unknown_category_gets_the_default_cue(tokenizers: dict) -> None:
    spec = get_family("tiny-qwen")
    image = _image("x/y/z.jpg", "MEX", "Mexico", "street art")
    items = build_items(QUESTIONS[:1], [], "image", [image], tokenizers["tiny-qwen"], spec)
    assert f"From {DEFAULT_CUE}," in items[0].text


def test_options_are_lettered_in_code_order(tokenizers: dict) -> None:
    spec = get_family("smol")
    items = build_items(QUESTIONS, ["BRA"], "text", [], tokenizers["smol"], spec)
    family_item, trust_item, god_item = items
    assert family_item.letters == ("A", "B", "C", "D")
    assert family_item.option_codes == (1, 2, 3, 4)
    assert "(A) Very important\n(B) Rather important\n(C) Not very important\n(D) Not at all" in (
        family_item.text
    )
    assert trust_item.letters == ("A", "B")
    assert god_item.letters == tuple("ABCDEFGHIJ") and "(J) 10\n" in god_item.text


def test_condition_errors_are_prompt_errors(tokenizers: dict) -> None:
    spec, tokenizer = get_family("smol"), tokenizers["smol"]
    with pytest.raises(PromptError, match="takes no images"):
        build_items(QUESTIONS, ["BRA"], "text", IMAGES, tokenizer, spec)
    with pytest.raises(PromptError, match="needs images"):
        build_items(QUESTIONS, ["BRA"], "image", [], tokenizer, spec)
    with pytest.raises(PromptError, match="unknown condition"):
        build_items(QUESTIONS, ["BRA"], "audio", [], tokenizer, spec)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- groups


def test_group_keys_follow_image_condition_country_and_family(tokenizers: dict) -> None:
    spec = get_family("tiny-qwen")
    tokenizer = tokenizers["tiny-qwen"]
    text = build_items(QUESTIONS, ["NGA", "BRA"], "text", [], tokenizer, spec)
    image = build_items(QUESTIONS, [], "image", IMAGES, tokenizer, spec)
    both = build_items(QUESTIONS, [], "image+country", IMAGES, tokenizer, spec)
    other_family = build_items(
        QUESTIONS, ["NGA"], "text", [], tokenizers["tiny-yi"], get_family("tiny-yi")
    )
    groups: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    questions: dict[str, list[str]] = defaultdict(list)
    for item in [*text, *image, *both, *other_family]:
        groups[item.group_key].add((item.family, item.condition, item.country + item.image_id))
        questions[item.group_key].append(item.question_id)
    assert len(groups) == 2 + 3 + 3 + 1
    assert all(len(members) == 1 for members in groups.values())
    assert all(ids == ["Q1", "Q57", "Q164"] for ids in questions.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_group_prompts_share_the_expected_token_prefix(family: str, tokenizers: dict) -> None:
    """Everything up to the question tokenizes the same alone and inside every prompt."""
    spec, tokenizer = get_family(family), tokenizers[family]
    items = [
        *build_items(QUESTIONS, ["NGA", "BRA"], "text", [], tokenizer, spec),
        *build_items(QUESTIONS, [], "image", IMAGES, tokenizer, spec),
        *build_items(QUESTIONS, [], "image+country", IMAGES, tokenizer, spec),
    ]
    requests = _requests(items, tokenizer, spec)
    by_group: dict[str, list[tuple[PromptItem, ScoringRequest]]] = defaultdict(list)
    for item, request in zip(items, requests, strict=True):
        by_group[item.group_key].append((item, request))
    prefixes: dict[tuple[str, str], np.ndarray] = {}
    for key, members in by_group.items():
        lengths = {request.prefix_len for _, request in members}
        assert len(lengths) == 1, key
        length = lengths.pop()
        shared = members[0][1].input_ids[:length]
        for item, request in members:
            np.testing.assert_array_equal(request.input_ids[:length], shared)
            assert encode_prompt(tokenizer, item.text[: item.prefix_chars]) == shared.tolist()
            # The prefix holds the image placeholder; the question comes right after it.
            assert (shared == spec.image_token_id).sum() == (1 if item.image_id else 0)
            rest = tokenizer.decode(request.input_ids[length:].tolist())
            question = next(q for q in QUESTIONS if q.id == item.question_id)
            assert rest.lstrip().startswith(question.text[:25]), rest[:60]
        prefixes[(members[0][0].condition, members[0][0].country)] = shared
    # The persona differs between countries, so their text groups' prefixes differ.
    assert not np.array_equal(prefixes[("text", "NGA")], prefixes[("text", "BRA")])


@pytest.mark.parametrize("family", FAMILIES)
def test_split_after_the_space_is_caught(family: str, tokenizers: dict) -> None:
    """A group prefix ending in a trailing space once passed: a split one character late must
    not."""
    spec, tokenizer = get_family(family), tokenizers[family]
    item = build_items(QUESTIONS[:1], ["NGA"], "text", [], tokenizer, spec)[0]
    assert item.text[item.prefix_chars] == " "
    broken = dataclasses.replace(item, prefix_chars=item.prefix_chars + 1)
    with pytest.raises(PromptError, match="does not tokenize like the joined prompt"):
        to_request(broken, tokenizer, spec, None)


# --------------------------------------------------------------------------- letters


@pytest.mark.parametrize("family", FAMILIES)
def test_letters_are_one_distinct_token_each_at_the_answer_position(
    family: str, tokenizers: dict
) -> None:
    spec, tokenizer = get_family(family), tokenizers[family]
    item = build_items(QUESTIONS[2:], ["NGA"], "text", [], tokenizer, spec)[0]
    request = to_request(item, tokenizer, spec, None)
    ids = request.option_token_ids.tolist()
    assert len(set(ids)) == 10
    for letter, token in zip("ABCDEFGHIJ", ids, strict=True):
        assert tokenizer.convert_ids_to_tokens(token).lstrip("▁Ġ") == letter
        extended = encode_prompt(tokenizer, item.text + letter)
        assert extended == [*request.input_ids.tolist(), token]


def test_smol_letters_are_the_ids_notes_measured(tokenizers: dict) -> None:
    spec, tokenizer = get_family("smol"), tokenizers["smol"]
    item = build_items(QUESTIONS[2:], ["NGA"], "text", [], tokenizer, spec)[0]
    assert to_request(item, tokenizer, spec, None).option_token_ids.tolist() == list(range(49, 59))


def test_a_letter_of_several_tokens_is_rejected(tokenizers: dict) -> None:
    tokenizer = tokenizers["tiny-vicuna"]
    with pytest.raises(PromptError, match="'Qxzvy' is not one token"):
        answer_letter_ids(tokenizer, "my answer would be (", ["A", "Qxzvy"])


class _LettersFromKGlued:
    """A tokenizer on which letters from K on take two tokens after "(" (as some vocabularies
    merge "(K"): wraps a real one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.apply_chat_template(*args, **kwargs)

    def __call__(self, text: Any, add_special_tokens: bool = True) -> dict[str, Any]:
        out = self.inner(text, add_special_tokens=add_special_tokens)
        texts, rows = (
            ([text], [out["input_ids"]]) if isinstance(text, str) else (text, out["input_ids"])
        )
        fixed = [
            [*row, row[-1]] if t[-2:-1] == "(" and t[-1] >= "K" else list(row)
            for t, row in zip(texts, rows, strict=True)
        ]
        return {"input_ids": fixed[0] if isinstance(text, str) else fixed}


def test_more_options_than_single_token_letters_are_reported_not_truncated(
    tokenizers: dict,
) -> None:
    spec = get_family("tiny-qwen")
    tokenizer = _LettersFromKGlued(tokenizers["tiny-qwen"])
    eleven = dataclasses.replace(
        QUESTIONS[2], id="Q999", options=tuple((c, str(c)) for c in range(1, 12))
    )
    prompt = build_items(QUESTIONS[:1], ["NGA"], "text", [], tokenizer, spec)[0].text
    assert single_token_letter_count(tokenizer, prompt) == 10
    built = build_prompt_set([*QUESTIONS, eleven], ["NGA"], "text", [], tokenizer, spec)
    assert [item.question_id for item in built.items] == ["Q1", "Q57", "Q164"]
    assert built.too_many_options == [
        "Q999 has 11 options but only 10 letters are single tokens at tiny-qwen's answer position"
    ]
    with pytest.raises(TooManyOptionsError, match="Q999 has 11 options"):
        build_items([*QUESTIONS, eleven], ["NGA"], "text", [], tokenizer, spec)


def test_more_options_than_letters_are_reported(tokenizers: dict) -> None:
    spec = get_family("smol")
    many = dataclasses.replace(
        QUESTIONS[2], id="Q998", options=tuple((c, str(c)) for c in range(1, 28))
    )
    built = build_prompt_set([many, QUESTIONS[0]], ["NGA"], "text", [], tokenizers["smol"], spec)
    assert [item.question_id for item in built.items] == ["Q1"]
    assert built.too_many_options == [
        "Q998 has 27 options but only 26 letters are single tokens at smol's answer position"
    ]


# --------------------------------------------------------------------------- tokens


def test_bos_comes_once_where_the_tokenizer_adds_it(tokenizers: dict) -> None:
    vicuna = tokenizers["tiny-vicuna"]
    bos = vicuna.bos_token_id
    item = build_items(QUESTIONS[:1], ["NGA"], "text", [], vicuna, get_family("tiny-vicuna"))[0]
    ids = to_request(item, vicuna, get_family("tiny-vicuna"), None).input_ids.tolist()
    assert ids[0] == bos and ids[1] != bos
    assert encode_prompt(vicuna, vicuna.bos_token + "USER: hi")[:2] != [bos, bos]
    for family in ("tiny-yi", "tiny-qwen", "smol"):
        tokenizer, spec = tokenizers[family], get_family(family)
        item = build_items(QUESTIONS[:1], ["NGA"], "text", [], tokenizer, spec)[0]
        first = to_request(item, tokenizer, spec, None).input_ids[0]
        assert tokenizer.convert_ids_to_tokens(int(first)) == "<|im_start|>", family


def test_image_must_match_the_condition(tokenizers: dict) -> None:
    spec, tokenizer = get_family("tiny-vicuna"), tokenizers["tiny-vicuna"]
    text_item = build_items(QUESTIONS[:1], ["NGA"], "text", [], tokenizer, spec)[0]
    image_item = build_items(QUESTIONS[:1], [], "image", IMAGES[:1], tokenizer, spec)[0]
    with pytest.raises(PromptError, match="image given"):
        to_request(text_item, tokenizer, spec, _prepared(spec, 0))
    with pytest.raises(PromptError, match="image missing"):
        to_request(image_item, tokenizer, spec, None)


def test_scoring_request_rejects_malformed_arrays() -> None:
    ids, options = np.arange(5, dtype=np.int64), np.array([1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="int64"):
        ScoringRequest(ids.astype(np.int32), None, options, "g")
    with pytest.raises(ValueError, match="repeat"):
        ScoringRequest(ids, None, np.array([3, 3], dtype=np.int64), "g")
    with pytest.raises(ValueError, match="prefix_len"):
        ScoringRequest(ids, None, options, "g", prefix_len=6)
    with pytest.raises(ValueError, match="1 image placeholder"):
        ScoringRequest(ids, None, options, "g").check_placeholder(image_token_id=3)


@pytest.mark.parametrize("family", ["tiny-vicuna", "smol"])
def test_every_real_value_question_builds_and_tokenizes(family: str, tokenizers: dict) -> None:
    """All 239 value questions of the real bank ($CVS_DATA): none too long, every prompt checked."""
    spec, tokenizer = get_family(family), tokenizers[family]
    bank = load_question_bank()
    questions = list(bank.questions.values())
    assert len(questions) == 239
    built = build_prompt_set(questions, ["VNM"], "text", [], tokenizer, spec)
    assert built.too_many_options == []
    requests = [to_request(item, tokenizer, spec, None) for item in built.items]
    assert len(requests) == 239
    assert len({request.prefix_len for request in requests}) == 1
    for question, request in zip(questions, requests, strict=True):
        assert request.option_token_ids.shape == (len(question.options),)


def test_unknown_country_is_a_prompt_error(tokenizers: dict) -> None:
    with pytest.raises(PromptError, match="unknown country code 'XYZ'"):
        build_items(QUESTIONS, ["XYZ"], "text", [], tokenizers["smol"], get_family("smol"))
