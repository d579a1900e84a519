"""Survey prompts: three conditions, one versioned template, letters checked against each tokenizer.

The study's protocol (NOTES.md §1) in our own wording: a persona line, rules that discourage
refusal and give "Don't know"/"No answer" the lowest weight, the question, its options lettered
"(A) …", and an answer prefix that ends right before the letter. The image comes before all text
(the family's chat template renders image parts first). Conditions:

- `text`: the country is named in the persona, no image;
- `image`: an image, no country named; the model is asked to infer where the image comes from,
  with a cue for the image's category;
- `image+country`: both (the control the study lacks).

Prompts are built whole, with the family's chat template, then tokenized without special tokens
beyond what the template produces (plus the BOS the tokenizer itself would add, as the Hugging
Face processor does). Items sharing image, condition, country and instructions carry one group
key; the shared text ends right before a space (`…Survey question:` | ` How …`), where
SentencePiece and byte-level BPE both start a new word, and `to_request` checks per prompt that
the split tokenizes exactly like the joined prompt (a trailing space broke it once: NOTES.md §3).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from cvs_families.prompt_text import (
    ANSWER_PREFIX,
    DEFAULT_CUE,
    LETTERS,
    OPTION_LINE,
    PERSONA_IMAGE,
    PERSONA_IMAGE_COUNTRY,
    PERSONA_TEXT,
    QUESTION_BODY,
    QUESTION_LEAD,
    RULES,
)
from cvs_families.requests import ScoringRequest

if TYPE_CHECKING:
    from cvs_evaluator.images import ImageRecord
    from cvs_families.spec import FamilySpec, PreparedImage

Condition = Literal["text", "image", "image+country"]
CONDITIONS: tuple[Condition, ...] = ("text", "image", "image+country")

CATEGORY_CUES: Mapping[str, str] = {
    "brands": "the brands, logos and products in it",
    "cooking and food": "the dishes, ingredients and ways of cooking in it",
    "geography": "the landscape, climate and buildings in it",
    "objects": "the everyday objects in it",
    "people and everyday life": "the people, clothing and everyday scenes in it",
    "public figures and pop culture": "the public figures and popular culture in it",
    "sports and recreation": "the sports and pastimes in it",
    "tradition": "the traditions, festivals and customs in it",
    "flag": "the flag in it",
    "family": "the home and belongings of the family in it",
}
"""The `image` condition's cue per image category (the study's eight, flags, Dollar Street)."""
TEMPLATE_TEXTS: tuple[str, ...] = (
    PERSONA_TEXT,
    PERSONA_IMAGE,
    PERSONA_IMAGE_COUNTRY,
    RULES,
    QUESTION_LEAD,
    QUESTION_BODY,
    ANSWER_PREFIX,
    OPTION_LINE,
    DEFAULT_CUE,
    json.dumps(dict(CATEGORY_CUES), sort_keys=True),
)
"""Every wording a prompt is made of."""
PROMPT_TEMPLATE_VERSION = (
    "cvs-prompt-" + hashlib.sha256("\0".join(TEMPLATE_TEXTS).encode()).hexdigest()[:12]
)
"""A hash of every wording above: changes whenever any of it changes, by construction; travels
with every item and result (a stored row is reused only under the same version)."""


class PromptError(ValueError):
    """A prompt cannot be built or tokenized as the protocol requires."""


class TooManyOptionsError(PromptError):
    """Questions have more options than the tokenizer has single-token letters."""


class SurveyQuestion(Protocol):
    """What a prompt needs of a question (`cvs_evaluator.questions.Question` has it)."""

    @property
    def id(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def options(self) -> tuple[tuple[int, str], ...]: ...
    @property
    def section(self) -> str: ...


@dataclass(frozen=True)
class PromptItem:
    """One prompt: a question asked under a condition for a country (and an image)."""

    question_id: str
    """WVS question id, e.g. `Q57`."""
    section: str
    """The question's questionnaire section."""
    country: str
    """ISO3: the persona's country (`text`) or the image's true country (image conditions)."""
    condition: Condition
    """`text`, `image` or `image+country`."""
    image_id: str
    """The image's id; "" for `text`."""
    image_category: str
    """The image's category; "" for `text`."""
    option_codes: tuple[int, ...]
    """WVS answer codes in option order."""
    letters: tuple[str, ...]
    """The option letters, `A`, `B`, … in option order."""
    text: str
    """The whole prompt as rendered by the family's chat template, ending with the answer
    prefix (right before the letter)."""
    prefix_chars: int
    """`text[:prefix_chars]` is shared by every item of the group (image, persona, rules)."""
    group_key: str
    """Equal for items sharing image, condition, country, instructions and family."""
    family: str
    """The model family whose chat template rendered `text`."""
    template_version: str
    """`PROMPT_TEMPLATE_VERSION` at build time."""

    @property
    def item_id(self) -> str:
        """Key of the item in a result store."""
        parts = (self.template_version, self.family, self.condition, self.country)
        return "|".join((*parts, self.image_id or "-", self.question_id))


@dataclass(frozen=True)
class PromptSet:
    """Items built, and the questions that could not be asked (never silently truncated)."""

    items: list[PromptItem]
    """The prompts, in question-major order within each country or image."""
    too_many_options: list[str]
    """One line per question with more options than single-token letters."""


# --------------------------------------------------------------------------- wording


def category_cue(category: str) -> str:
    """The cue sentence fragment for an image category (default for unknown categories)."""
    return CATEGORY_CUES.get(category.strip().lower().replace("_", " "), DEFAULT_CUE)


def persona_text(condition: Condition, country_name: str, category: str) -> str:
    """The persona line and rules: everything a group shares before the question."""
    if condition == "text":
        persona = PERSONA_TEXT.format(country=country_name)
    elif condition == "image":
        persona = PERSONA_IMAGE.format(cue=category_cue(category))
    elif condition == "image+country":
        persona = PERSONA_IMAGE_COUNTRY.format(country=country_name)
    else:
        raise PromptError(f"unknown condition {condition!r}; conditions are {CONDITIONS}")
    return f"{persona} {RULES}"


def question_text(question: SurveyQuestion, letters: Sequence[str]) -> str:
    """The question and its lettered options (the part after the shared text)."""
    lines = "\n".join(
        OPTION_LINE.format(letter=letter, label=label)
        for letter, (_, label) in zip(letters, question.options, strict=True)
    )
    return QUESTION_BODY.format(question=question.text.strip(), options=lines)


def render_prompt(
    shared: str, body: str, *, with_image: bool, tokenizer: Any, spec: FamilySpec
) -> tuple[str, int]:
    """(whole prompt, characters of the shared prefix) through the family's chat template."""
    user_text = shared + QUESTION_LEAD + body
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": user_text})
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}],
        chat_template=spec.chat_template,
        tokenize=False,
        add_generation_prompt=True,
    )
    if not isinstance(rendered, str):
        raise PromptError(f"{spec.name}: the chat template did not render to a string")
    if rendered.count(user_text) != 1:
        raise PromptError(f"{spec.name}: the chat template changed the prompt's text")
    prefix_chars = rendered.index(user_text) + len(shared) + len(QUESTION_LEAD)
    separator = "" if rendered[-1:].isspace() else " "
    return rendered + separator + ANSWER_PREFIX, prefix_chars


def group_key(
    family: str, condition: Condition, country: str, image_id: str, shared_text: str
) -> str:
    """Stable key of a prefix group: a hash of everything the group's items share."""
    payload = json.dumps(
        [PROMPT_TEMPLATE_VERSION, family, condition, country, image_id, shared_text],
        ensure_ascii=False,
    )
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
    return f"{condition}:{country}:{digest}"


# --------------------------------------------------------------------------- tokenizing


def leading_special_ids(tokenizer: Any) -> list[int]:
    """Tokens the tokenizer itself puts before any text (a BOS for Llama-style tokenizers)."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start : start + len(without)] == without:
            return with_special[:start]
    return []


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: no special tokens beyond the template's own, plus the
    tokenizer's leading BOS unless the template already wrote it."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    lead = leading_special_ids(tokenizer)
    if lead and ids[: len(lead)] != lead:
        ids = lead + ids
    return ids


def answer_letter_ids(tokenizer: Any, prompt: str, letters: Sequence[str]) -> list[int]:
    """The token of each letter at the prompt's answer position; PromptError unless every letter
    is exactly one token there (prompt + letter tokenizes as prompt's tokens + one)."""
    base = encode_prompt(tokenizer, prompt)
    extended = tokenizer([prompt + letter for letter in letters], add_special_tokens=False)
    lead = leading_special_ids(tokenizer)
    ids = []
    for letter, row in zip(letters, extended["input_ids"], strict=True):
        tokens = list(row)
        if lead and tokens[: len(lead)] != lead:
            tokens = lead + tokens
        if len(tokens) != len(base) + 1 or tokens[: len(base)] != base:
            raise PromptError(
                f"option letter {letter!r} is not one token at the answer position "
                f"(prompt ends {prompt[-30:]!r})"
            )
        ids.append(tokens[-1])
    if len(set(ids)) != len(ids):
        raise PromptError(f"option letters {list(letters)} share a token: {ids}")
    return ids


def single_token_letter_count(tokenizer: Any, prompt: str) -> int:
    """How many letters A, B, … (consecutively) are one token each at the answer position."""
    count = 0
    for letter in LETTERS:
        try:
            answer_letter_ids(tokenizer, prompt, [letter])
        except PromptError:
            break
        count += 1
    return count


# --------------------------------------------------------------------------- building


def build_prompt_set(
    questions: Sequence[SurveyQuestion],
    countries: Sequence[str],
    condition: Condition,
    images: Sequence[ImageRecord],
    tokenizer: Any,
    spec: FamilySpec,
) -> PromptSet:
    """Every (country or image) × question prompt of one condition; questions with more options
    than single-token letters are listed in `too_many_options`, not truncated.

    `text`: one group per country in `countries` (ISO3); `images` must be empty. Image
    conditions: one group per image whose true country is in `countries` (all images when
    `countries` is empty); the country is the image's, named only under `image+country`.
    """
    if condition not in CONDITIONS:
        raise PromptError(f"unknown condition {condition!r}; conditions are {CONDITIONS}")
    groups = _groups(countries, condition, images)
    letter_limit: int | None = None
    items: list[PromptItem] = []
    too_many: dict[str, str] = {}
    for country, country_name, image_id, category in groups:
        shared = persona_text(condition, country_name, category)
        key = group_key(spec.name, condition, country, image_id, shared)
        for question in questions:
            count = len(question.options)
            if count == 0:
                raise PromptError(f"{question.id} has no options")
            limit = len(LETTERS) if letter_limit is None else letter_limit
            if count > limit:
                too_many[question.id] = _too_many_line(question, limit, spec)
                continue
            letters = tuple(LETTERS[:count])
            text, prefix_chars = render_prompt(
                shared,
                question_text(question, letters),
                with_image=bool(image_id),
                tokenizer=tokenizer,
                spec=spec,
            )
            if letter_limit is None:
                letter_limit = single_token_letter_count(tokenizer, text)
                if letter_limit == 0:
                    raise PromptError(f"{spec.name}: no option letter is one token after {text!r}")
                if count > letter_limit:
                    too_many[question.id] = _too_many_line(question, letter_limit, spec)
                    continue
            items.append(
                PromptItem(
                    question_id=question.id,
                    section=question.section,
                    country=country,
                    condition=condition,
                    image_id=image_id,
                    image_category=category,
                    option_codes=tuple(code for code, _ in question.options),
                    letters=letters,
                    text=text,
                    prefix_chars=prefix_chars,
                    group_key=key,
                    family=spec.name,
                    template_version=PROMPT_TEMPLATE_VERSION,
                )
            )
    return PromptSet(items=items, too_many_options=list(too_many.values()))


def build_items(
    questions: Sequence[SurveyQuestion],
    countries: Sequence[str],
    condition: Condition,
    images: Sequence[ImageRecord],
    tokenizer: Any,
    spec: FamilySpec,
) -> list[PromptItem]:
    """Like `build_prompt_set`, but a question with too many options is an error."""
    built = build_prompt_set(questions, countries, condition, images, tokenizer, spec)
    if built.too_many_options:
        raise TooManyOptionsError("; ".join(built.too_many_options))
    return built.items


def _too_many_line(question: SurveyQuestion, limit: int, spec: FamilySpec) -> str:
    return (
        f"{question.id} has {len(question.options)} options but only {limit} letters are single "
        f"tokens at {spec.name}'s answer position"
    )


def _groups(
    countries: Sequence[str], condition: Condition, images: Sequence[ImageRecord]
) -> list[tuple[str, str, str, str]]:
    """(country ISO3, country name, image id, image category) per prompt group."""
    if condition == "text":
        if images:
            raise PromptError("the text condition takes no images")
        if not countries:
            raise PromptError("the text condition needs at least one country")
        return [(*_country(code), "", "") for code in countries]
    if not images:
        raise PromptError(f"the {condition} condition needs images")
    wanted = set(countries)
    return [
        (image.country, image.country_name, image.id, image.category)
        for image in images
        if not wanted or image.country in wanted
    ]


def _country(code: str) -> tuple[str, str]:
    """(ISO3, English name) from the project's country table."""
    from cvs_evaluator.countries import country

    try:
        found = country(code)
    except LookupError as error:
        raise PromptError(str(error).strip("'\"")) from error
    return found.iso3, found.name


def to_request(
    item: PromptItem, tokenizer: Any, spec: FamilySpec, prepared_image: PreparedImage | None
) -> ScoringRequest:
    """Tokenize one item into a `ScoringRequest`, checking its letters, its image placeholder and
    that its group's shared prefix tokenizes exactly like the joined prompt."""
    if bool(item.image_id) != (prepared_image is not None):
        raise PromptError(
            f"{item.item_id}: image {'missing' if item.image_id else 'given'} for a "
            f"{item.condition} prompt"
        )
    ids = encode_prompt(tokenizer, item.text)
    prefix_ids = encode_prompt(tokenizer, item.text[: item.prefix_chars])
    if ids[: len(prefix_ids)] != prefix_ids:
        raise PromptError(
            f"{item.item_id}: the group prefix does not tokenize like the joined prompt at "
            f"{item.text[max(0, item.prefix_chars - 20) : item.prefix_chars + 20]!r}"
        )
    option_ids = answer_letter_ids(tokenizer, item.text, item.letters)
    request = ScoringRequest(
        input_ids=np.asarray(ids, dtype=np.int64),
        image=prepared_image,
        option_token_ids=np.asarray(option_ids, dtype=np.int64),
        group_key=item.group_key,
        prefix_len=len(prefix_ids),
        item_id=item.item_id,
    )
    request.check_placeholder(spec.image_token_id)
    return request
