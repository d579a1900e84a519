"""An engine folder's tokenizer renders and encodes exactly as transformers', without it.

Each built family's transformers tokenizer is written out as the export writes it (backend JSON
plus the special-token config), loaded back as an `EngineTokenizer`, and compared on chat
templates and token ids; a subprocess shows the loaded module pulls in neither torch nor
transformers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import TemplateError

from cvs_families.checkpoint import ensure_checkpoint, load_tokenizer
from cvs_families.engine_tokenizer import EngineTokenizer, special_tokens_config
from cvs_families.prompt_text import ANSWER_PREFIX, LETTERS
from cvs_families.registry import get_family
from cvs_families.spec import FamilySpec

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("smol", "tiny-vicuna", "tiny-yi", "tiny-qwen")
USER_TEXTS = (
    "How important is family in your life?",
    "Imagine you are a person from Türkiye, 日本 (Côte d'Ivoire).\n\nHow important is family?",
    "  leading and trailing spaces  \n(A) Very important\n(B) Rather important ",
    'tabs\tand  double spaces, emoji 😀, <b>html</b> & "quotes"',
)
OPTION_SUFFIX = " " + ANSWER_PREFIX
"""What the evaluator appends to a rendered prompt before the option letter."""


@dataclass(frozen=True)
class Pair:
    """A family's transformers tokenizer and the `EngineTokenizer` written from it."""

    spec: FamilySpec
    hf: Any
    engine: EngineTokenizer
    folder: Path


def write_files(hf: Any, folder: Path) -> tuple[Path, Path]:
    """The two files as the export writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_json, config_json = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tokenizer_json.write_text(hf.backend_tokenizer.to_str(), encoding="utf-8")
    config_json.write_text(json.dumps(special_tokens_config(hf)), encoding="utf-8")
    return tokenizer_json, config_json


def make_pair(family: str, folder: Path) -> Pair:
    spec = get_family(family)
    hf = load_tokenizer(spec, ensure_checkpoint(spec))
    engine = EngineTokenizer.from_files(*write_files(hf, folder))
    return Pair(spec, hf, engine, folder)


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return make_pair(request.param, tmp_path_factory.mktemp(request.param))


def user_message(text: str, with_image: bool) -> dict[str, Any]:
    content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def conversations() -> list[list[dict[str, Any]]]:
    """Single user turns with and without an image, and one longer chat."""
    chats = [
        [user_message(text, with_image)] for text in USER_TEXTS for with_image in (False, True)
    ]
    chats.append(
        [
            {"role": "system", "content": [{"type": "text", "text": "Be brief.\n"}]},
            {**user_message(" Türkiye, 日本 ", True), "name": None},
            {"role": "assistant", "content": [{"type": "text", "text": "(A) "}]},
            user_message("And now?", False),
        ]
    )
    return chats


def render(tokenizer: Any, chat: Any, template: str, add_generation_prompt: bool = True) -> Any:
    return tokenizer.apply_chat_template(
        chat, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def rendered_prompts(pair: Pair) -> list[str]:
    return [render(pair.hf, chat, pair.spec.chat_template) for chat in conversations()]


def probe_texts(pair: Pair) -> list[str]:
    """Prompts as the evaluator builds them, the image token alone, and the empty text."""
    texts = [pair.spec.image_token, "", *USER_TEXTS]
    for prompt in rendered_prompts(pair):
        texts.append(prompt)
        texts.extend(prompt + OPTION_SUFFIX + letter for letter in LETTERS[:10])
    return texts


# Chat templates --------------------------------------------------------------------------------


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_as_transformers(pair: Pair, add_generation_prompt: bool) -> None:
    for chat in conversations():
        expected = render(pair.hf, chat, pair.spec.chat_template, add_generation_prompt)
        got = render(pair.engine, chat, pair.spec.chat_template, add_generation_prompt)
        assert got == expected, f"{pair.spec.name}: {chat}"


def test_batched_conversations_render_as_transformers(pair: Pair) -> None:
    chats = conversations()
    assert render(pair.engine, chats, pair.spec.chat_template) == render(
        pair.hf, chats, pair.spec.chat_template
    )


def test_special_tokens_reach_the_template_as_in_transformers(pair: Pair) -> None:
    # Unset tokens are undefined in transformers' templates, not None
    template = (
        "{% for name in ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token',"
        " 'cls_token', 'mask_token'] %}{{ name }}={{ tools }}/{{ documents }}{% endfor %}"
        "[{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ pad_token }}]"
        "{{ bos_token is defined }}{{ pad_token is defined }}{{ sep_token is defined }}"
        "{{ messages | tojson }}{{ messages | tojson(indent=2) }}"
    )
    chat = [user_message("<b>Türkiye</b> & 日本", True)]
    assert render(pair.engine, chat, template) == render(pair.hf, chat, template)


FEATURE_TEMPLATE = """\
{% set ns = namespace(turns=0) %}
{% for m in messages %}
    {% if loop.index > 3 %}{% break %}{% endif %}
    {% set ns.turns = ns.turns + 1 %}
    {{ m['role'] }}: {{ m['content'] if m['content'] is string else m['content'] | tojson }}
    name defined: {{ m.name is defined }}; reasoning: {{ m.reasoning_content }}|{{ m.thinking }}
{% endfor %}
{{ ns.turns }} {{ dict(a=1, b='ü') | tojson }} {{ strftime_now('%Y') }}
{% if add_generation_prompt %}
    >>>
{% endif %}
"""
"""Block tags on their own lines (trim_blocks, lstrip_blocks), loop controls, namespace, dict,
tojson, strftime_now, and message clean-up (None keys dropped, reasoning aliased)."""


def test_template_features_render_as_transformers(pair: Pair) -> None:
    chat = [
        {"role": "system", "content": "Be brief.", "name": None},
        {**user_message("  Türkiye,\n日本 ", True), "name": "ayşe"},
        {"role": "assistant", "content": "(A)", "reasoning": "because"},
        user_message("not rendered: the loop breaks first", False),
    ]
    for add_generation_prompt in (True, False):
        expected = render(pair.hf, chat, FEATURE_TEMPLATE, add_generation_prompt)
        assert render(pair.engine, chat, FEATURE_TEMPLATE, add_generation_prompt) == expected
    assert "because|because" in expected


def test_generation_block_renders_its_body(pair: Pair) -> None:
    template = (
        "{% for m in messages %}{% generation %}[{{ m['role'] }}]{% endgeneration %}{% endfor %}"
    )
    chat = [user_message("hi", False), {"role": "assistant", "content": "ok"}]
    got = render(pair.engine, chat, template)
    assert got == "[user][assistant]"
    assert got == render(pair.hf, chat, template)


def test_raise_exception_raises_a_template_error(pair: Pair) -> None:
    template = (
        "{% if messages[0]['role'] != 'system' %}{{ raise_exception('no system turn') }}{% endif %}"
    )
    with pytest.raises(TemplateError, match="no system turn"):
        render(pair.engine, [user_message("hi", False)], template)


def test_tokenize_true_and_bad_inputs_are_refused(pair: Pair) -> None:
    chat = [user_message("hi", False)]
    with pytest.raises(ValueError, match="tokenize=False"):
        pair.engine.apply_chat_template(chat, chat_template=pair.spec.chat_template)
    with pytest.raises(ValueError, match="empty"):
        render(pair.engine, [], pair.spec.chat_template)


# Token ids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_input_ids_match_transformers(pair: Pair, add_special_tokens: bool) -> None:
    texts = probe_texts(pair)
    for text in texts:
        got = pair.engine(text, add_special_tokens=add_special_tokens)["input_ids"]
        assert got == list(pair.hf(text, add_special_tokens=add_special_tokens)["input_ids"]), text
    batch_got = pair.engine(texts, add_special_tokens=add_special_tokens)["input_ids"]
    batch_expected = pair.hf(texts, add_special_tokens=add_special_tokens)["input_ids"]
    assert batch_got == [list(row) for row in batch_expected]
    assert pair.engine([], add_special_tokens=add_special_tokens)["input_ids"] == []


def test_encode_matches_transformers(pair: Pair) -> None:
    for text in probe_texts(pair)[:30]:
        assert pair.engine.encode(text, add_special_tokens=False) == pair.hf.encode(
            text, add_special_tokens=False
        )
        assert pair.engine.encode(text) == pair.hf.encode(text)


def test_token_and_id_conversions_match_transformers(pair: Pair) -> None:
    spec, hf, engine = pair.spec, pair.hf, pair.engine
    assert engine.convert_tokens_to_ids(spec.image_token) == spec.image_token_id
    assert hf.convert_tokens_to_ids(spec.image_token) == spec.image_token_id
    unknown = "definitely-not-one-token-\u2603"
    assert engine.convert_tokens_to_ids(unknown) == hf.convert_tokens_to_ids(unknown)
    ids = sorted({*range(300), *engine(rendered_prompts(pair)[-1])["input_ids"]})
    assert engine.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert engine.convert_ids_to_tokens(spec.image_token_id) == spec.image_token
    tokens = [t for t in hf.convert_ids_to_tokens(ids) if t is not None]
    assert engine.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)


def test_pad_token_id_and_flags_match_transformers(pair: Pair) -> None:
    assert pair.engine.pad_token_id == pair.hf.pad_token_id
    assert pair.engine.is_fast is True
    assert pair.engine.special_tokens_map == pair.hf.special_tokens_map


def test_special_tokens_config_records_every_named_token(pair: Pair) -> None:
    config = special_tokens_config(pair.hf)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert config[name] == getattr(pair.hf, name)
    assert {k: v for k, v in config.items() if v is not None} == pair.hf.special_tokens_map


def test_a_config_with_a_non_string_token_is_refused(tmp_path: Path) -> None:
    make_pair("tiny-qwen", tmp_path)
    bad = tmp_path / "tokenizer_config.json"
    bad.write_text(json.dumps({"pad_token": 3}), encoding="utf-8")
    with pytest.raises(ValueError, match="pad_token"):
        EngineTokenizer.from_files(tmp_path / "tokenizer.json", bad)


# No torch, no transformers ---------------------------------------------------------------------


def test_scoring_with_the_files_loads_neither_torch_nor_transformers(tmp_path: Path) -> None:
    pair = make_pair("tiny-qwen", tmp_path)
    code = "\n".join(
        [
            "import json, sys",
            "from pathlib import Path",
            "from cvs_families.engine_tokenizer import EngineTokenizer",
            f"folder = Path({str(pair.folder)!r})",
            "tok = EngineTokenizer.from_files(",
            "    folder / 'tokenizer.json', folder / 'tokenizer_config.json'",
            ")",
            "content = [{'type': 'image'}, {'type': 'text', 'text': 'Türkiye, 日本'}]",
            "text = tok.apply_chat_template(",
            "    [{'role': 'user', 'content': content}],",
            f"    chat_template={pair.spec.chat_template!r},",
            "    tokenize=False,",
            "    add_generation_prompt=True,",
            ")",
            "ids = tok(text, add_special_tokens=False)['input_ids']",
            "batch = tok([text, text + ' (A'], add_special_tokens=True)['input_ids']",
            "print(json.dumps([ids, tok.pad_token_id]))",
            "print(json.dumps(sorted(sys.modules)))",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    *_, ids_line, modules_line = out.stdout.strip().splitlines()
    loaded = set(json.loads(modules_line))
    assert "torch" not in loaded
    assert "transformers" not in loaded
    content = [{"type": "image"}, {"type": "text", "text": "Türkiye, 日本"}]
    expected = render(pair.hf, [{"role": "user", "content": content}], pair.spec.chat_template)
    ids, pad = json.loads(ids_line)
    assert ids == list(pair.hf(expected, add_special_tokens=False)["input_ids"])
    assert pad == pair.hf.pad_token_id
