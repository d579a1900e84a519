"""A tokenizer an engine folder can carry: transformers' behaviour without torch or transformers.

An engine copied to a small machine must still turn survey prompts into token ids exactly as
the export did. The evaluator uses a transformers `PreTrainedTokenizerFast` only through a
small subset (call, `encode`, token/id conversion, `apply_chat_template(tokenize=False)`,
`pad_token_id`, `is_fast`); `EngineTokenizer` is a drop-in for that subset built on the
`tokenizers` library and `jinja2` alone, from two files the export writes:

- `tokenizer.json`: transformers' backend (`hf_tokenizer.backend_tokenizer.to_str()`), so
  encoding runs the very pipeline transformers runs (normalizer, added tokens, post-processor);
- `tokenizer_config.json`: the special-token strings (`special_tokens_config`), which
  transformers hands to the chat template as variables and which give `pad_token_id`.

Chat templates render as transformers 5 renders them (`render_jinja_template` in
`transformers/utils/chat_template_utils.py`): the same sandboxed jinja environment, filters,
globals and template variables, and the same clean-up of messages, so the output is equal byte
for byte. Neither torch nor transformers is imported, at import time or later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, overload

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
"""transformers' named special tokens (`SPECIAL_TOKENS_ATTRIBUTES`), in its order: each one
that is set becomes a chat-template variable."""

MIN_JINJA = (3, 1, 6)
"""Older jinja2 has known sandbox escapes; transformers refuses it for chat templates too."""

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
"""Names a message's reasoning goes under; transformers fills the first two from any of them."""


def special_tokens_config(hf_tokenizer: Any) -> dict[str, str | None]:
    """The special-token strings of a transformers tokenizer, for `tokenizer_config.json`.

    Duck-typed (reads `bos_token`, `eos_token`, … and, when present, `special_tokens_map` for
    model-specific named tokens such as an image token), so this module never imports
    transformers. Every name transformers passes to chat templates is recorded, unset ones as
    None.
    """
    config: dict[str, str | None] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = getattr(hf_tokenizer, name, None)
        config[name] = None if value is None else str(value)
    extra = getattr(hf_tokenizer, "special_tokens_map", None)
    if isinstance(extra, Mapping):
        for name, value in extra.items():
            if name not in config and value is not None:
                config[str(name)] = str(value)
    return config


class EngineTokenizer:
    """Drop-in for the subset of transformers' fast tokenizer the evaluator uses.

    Encoding goes straight to the `tokenizers` backend with padding, truncation and the
    splitting of special tokens off, as transformers' calls without those options do.
    """

    is_fast = True
    """transformers' fast tokenizers say so; callers may check it."""

    def __init__(self, backend: Tokenizer, special_tokens: Mapping[str, str | None]) -> None:
        self.backend = backend
        """The `tokenizers.Tokenizer` doing the encoding."""
        self.special_tokens: dict[str, str | None] = dict(special_tokens)
        """Every recorded special-token name → string (None when unset)."""
        # transformers calls the backend with these settings unless asked otherwise
        self.backend.no_padding()
        self.backend.no_truncation()
        self.backend.encode_special_tokens = False

    @classmethod
    def from_files(cls, tokenizer_json: Path, tokenizer_config_json: Path) -> EngineTokenizer:
        """Load the backend `tokenizer.json` and the special-token `tokenizer_config.json`.

        Raises ValueError when the config is not an object of names to strings or nulls.
        """
        backend = Tokenizer.from_file(str(tokenizer_json))
        config = json.loads(Path(tokenizer_config_json).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"{tokenizer_config_json}: expected a JSON object of special tokens")
        for name, value in config.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"{tokenizer_config_json}: {name} must be a string or null, got {value!r}"
                )
        return cls(backend, config)

    # Special tokens -------------------------------------------------------------------------

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The set special tokens, as transformers' `special_tokens_map` (template variables)."""
        return {name: value for name, value in self.special_tokens.items() if value is not None}

    @property
    def bos_token(self) -> str | None:
        """The beginning-of-sequence token string, if any."""
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token string, if any."""
        return self.special_tokens.get("eos_token")

    @property
    def unk_token(self) -> str | None:
        """The unknown token string, if any."""
        return self.special_tokens.get("unk_token")

    @property
    def pad_token(self) -> str | None:
        """The padding token string, if any."""
        return self.special_tokens.get("pad_token")

    @property
    def unk_token_id(self) -> int | None:
        """Id of `unk_token`; None when it is unset or not in the vocabulary."""
        unk = self.unk_token
        return None if unk is None else self.backend.token_to_id(unk)

    @property
    def pad_token_id(self) -> int | None:
        """Id of `pad_token` (None when unset), looked up as transformers does."""
        pad = self.pad_token
        return None if pad is None else self.convert_tokens_to_ids(pad)

    # Encoding -------------------------------------------------------------------------------

    @overload
    def __call__(self, text: str, *, add_special_tokens: bool = True) -> dict[str, list[int]]: ...

    @overload
    def __call__(
        self, text: list[str] | tuple[str, ...], *, add_special_tokens: bool = True
    ) -> dict[str, list[list[int]]]: ...

    def __call__(
        self, text: str | list[str] | tuple[str, ...], *, add_special_tokens: bool = True
    ) -> dict[str, list[int]] | dict[str, list[list[int]]]:
        """`{"input_ids", "attention_mask"}` of one text, or lists of them for a batch."""
        if isinstance(text, str):
            encoding = self.backend.encode(text, add_special_tokens=add_special_tokens)
            return {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask}
        if not all(isinstance(t, str) for t in text):
            raise TypeError("expected a text or a list of texts")
        encodings = self.backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` (transformers' `encode`, without its padding options)."""
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    @overload
    def convert_ids_to_tokens(self, ids: int) -> str | None: ...

    @overload
    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str | None]: ...

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str | None] | None:
        """Token strings of ids; None for an id outside the vocabulary, as transformers gives."""
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(int(i)) for i in ids]

    @overload
    def convert_tokens_to_ids(self, tokens: str) -> int | None: ...

    @overload
    def convert_tokens_to_ids(self, tokens: list[str] | tuple[str, ...]) -> list[int | None]: ...

    def convert_tokens_to_ids(
        self, tokens: str | list[str] | tuple[str, ...]
    ) -> int | list[int | None] | None:
        """Ids of token strings; an unknown token gives `unk_token_id`, as in transformers."""
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str) -> int | None:
        found = self.backend.token_to_id(token)
        return self.unk_token_id if found is None else found

    # Chat templates -------------------------------------------------------------------------

    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
        *,
        chat_template: str,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str | list[str]:
        """`chat_template` rendered for `conversation` (or a list of them), as transformers'
        `apply_chat_template(..., tokenize=False)` renders it.

        Only rendering is supported: `tokenize=True` raises ValueError (callers encode the text
        themselves, with the options they need). Tools must be JSON schemas (dicts).
        """
        if tokenize:
            raise ValueError("EngineTokenizer.apply_chat_template supports only tokenize=False")
        if len(conversation) == 0:
            raise ValueError("cannot apply a chat template to an empty conversation")
        batched = isinstance(conversation[0], (list, tuple))
        chats: list[Any] = list(conversation) if batched else [conversation]
        for name, given in (("tools", tools), ("documents", documents)):
            if given is not None and not all(isinstance(item, Mapping) for item in given):
                raise TypeError(f"{name} must be a list of dicts (JSON schemas for tools)")
        compiled = compile_chat_template(chat_template)
        variables = {**self.special_tokens_map, **template_kwargs}
        rendered = [
            compiled.render(
                messages=_clean_messages(chat),
                tools=_plain(tools),
                documents=_plain(documents),
                add_generation_prompt=add_generation_prompt,
                **_plain(variables),
            )
            for chat in chats
        ]
        return rendered if batched else rendered[0]


# Rendering ------------------------------------------------------------------------------------


def _clean_messages(chat: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages as transformers hands them to the template: plain copies, keys whose value is
    None dropped (templates handle a missing key better than None), reasoning aliased."""
    messages = []
    for message in chat:
        if not isinstance(message, Mapping):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        plain = {key: _plain(value) for key, value in message.items() if value is not None}
        reasoning = next((plain[k] for k in REASONING_FIELDS if plain.get(k) is not None), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        messages.append(plain)
    return messages


def _plain(value: Any) -> Any:
    """A copy made of JSON types only: the sandbox must see nothing with dangerous methods
    (transformers rebuilds template inputs the same way; other objects become "<TypeName>")."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return f"<{type(value).__name__}>"


class GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` renders its body, as in transformers (which also
    records where assistant text lies; nothing here needs that)."""

    tags = {"generation"}  # noqa: RUF012 -- jinja's Extension declares `tags` a plain set

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        """Parse the body up to `endgeneration` into a call of `_render_body`."""
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_render_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _render_body(self, caller: jinja2.runtime.Macro) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    """Templates call `raise_exception(...)` to reject a conversation."""
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' `tojson`: plain `json.dumps`, no HTML escaping, unicode kept."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    """The current local time, for templates that print today's date."""
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` in templates, without giving them the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        """`dict.fromkeys`."""
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's `namespace` refusing underscore names, which could reach CPython internals."""

    # No named `self`, as in jinja's Namespace, so that `namespace(self=...)` still works
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore attribute {name!r}")


def _jinja_version() -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", jinja2.__version__)[:3])


@lru_cache(maxsize=16)
def compile_chat_template(chat_template: str) -> jinja2.Template:
    """`chat_template` compiled in transformers' chat-template environment (cached by text).

    Raises ImportError when jinja2 is older than 3.1.6 (sandbox escapes; chat templates are
    untrusted code), and jinja2's TemplateSyntaxError for a malformed template.
    """
    if _jinja_version() < MIN_JINJA:
        raise ImportError(f"chat templates need jinja2>=3.1.6, found {jinja2.__version__}")
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(chat_template)


__all__ = [
    "SPECIAL_TOKEN_NAMES",
    "EngineTokenizer",
    "compile_chat_template",
    "special_tokens_config",
]
