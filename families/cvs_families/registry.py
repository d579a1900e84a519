"""The model-family registry: a name on the command line → that family's `FamilySpec`.

Entries are lazy "module:attr" strings, so importing the registry imports neither torch nor
any family module; `get_family` imports the one asked for. An unknown name raises
`UnknownFamilyError` listing the valid names, with a suggestion ("did you mean 'yi34b'?").

How to add a family
-------------------
1. Put its published `config.json` (and what is known of its processor: chat template, image
   token, special tokens, with sources) in `cvs_families/configs/`.
2. Write one module `cvs_families/<family>.py`, numpy only at import time, defining the full
   `FamilySpec` (kind "real", `hf_id`, config from `load_packaged_json`, chat template in the
   HF processor format, image token, tokenizer kind) and, if it should have a tiny stand-in,
   a `TokenizerRecipe` with the real special-token layout, `TinySizes` keeping the family's
   query:kv ratio, and a tiny `FamilySpec` whose config comes from `derive_tiny_config` and
   whose `BuildRecipe` names `cvs_families.checkpoint_build:build_tiny_checkpoint`.
3. Register the names below with `register_family("name", "cvs_families.<family>:ATTR")`.
4. The generic tests then cover it: config diff of the tiny against the full config, meta-device
   parameter count, preprocessing and packing parity with transformers, build, fingerprint,
   load refusals, single-token letters, peakedness. Nothing else in the code names a family.
A LLaVA-NeXT variant needs nothing more; another architecture also needs its own
preprocessing/packing in the spec and a builder.
"""

from __future__ import annotations

import difflib
from importlib import import_module

from cvs_families.spec import FamilySpec

_ENTRIES: dict[str, str] = {}


class UnknownFamilyError(KeyError):
    """No family of that name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


def register_family(name: str, target: str) -> None:
    """Register `name` → "module:attr" of a `FamilySpec`; a name can be registered once."""
    if ":" not in target:
        raise ValueError(f"family target must be 'module:attr', got {target!r}")
    if name in _ENTRIES and _ENTRIES[name] != target:
        raise ValueError(f"family {name!r} is already registered as {_ENTRIES[name]!r}")
    _ENTRIES[name] = target


def family_names() -> list[str]:
    """Every registered family name, sorted."""
    return sorted(_ENTRIES)


def get_family(name: str) -> FamilySpec:
    """The spec registered as `name`, or `UnknownFamilyError` with the valid names."""
    target = _ENTRIES.get(name)
    if target is None:
        close = difflib.get_close_matches(name, _ENTRIES, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownFamilyError(
            f"unknown model family {name!r}{hint} (valid: {', '.join(family_names())})"
        )
    module, _, attr = target.partition(":")
    spec = getattr(import_module(module), attr)
    if not isinstance(spec, FamilySpec) or spec.name != name:
        raise TypeError(f"registry entry {name!r} → {target} is not the FamilySpec {name!r}")
    return spec


register_family("vicuna13b", "cvs_families.vicuna:VICUNA13B")
register_family("yi34b", "cvs_families.yi:YI34B")
register_family("qwen72b", "cvs_families.qwen:QWEN72B")
register_family("tiny-vicuna", "cvs_families.vicuna:TINY_VICUNA")
register_family("tiny-yi", "cvs_families.yi:TINY_YI")
register_family("tiny-qwen", "cvs_families.qwen:TINY_QWEN")
register_family("smol", "cvs_families.smol:SMOL")
