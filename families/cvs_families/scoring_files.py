"""What an engine folder carries so that scoring needs neither the checkpoint nor torch.

`cvs-export build` writes four files beside the graphs, all covered by the manifest's hashes:
- `tokenizer.json`: the checkpoint tokenizer's backend (what transformers encodes with), read by
  the `tokenizers` library;
- `tokenizer_config.json`: the special-token strings the chat template may use;
- `chat_template.jinja`: the family's chat template, rendered with jinja2;
- `family.json`: the family's numpy facts (`FamilyFacts`): image token, tiling, letter ids, pad.

At load the facts are computed again from the installed family spec and the folder's tokenizer
and must be equal, field by field: an engine of another family, or a tokenizer that encodes the
letters differently, is refused naming the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from cvs_families.checkpoint_facts import letter_token_ids, pad_token_id

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec

TOKENIZER_FILE = "tokenizer.json"
"""The tokenizer's backend JSON."""
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
"""Special-token strings (`bos_token`, `eos_token`, `unk_token`, `pad_token`)."""
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""The family's chat template."""
FACTS_FILE = "family.json"
"""`FamilyFacts` as JSON."""
SCORING_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE, FACTS_FILE)
"""Every file scoring reads besides the graphs and the manifest."""
CHECKED_LETTERS = 10
"""Option letters whose token ids the facts record (the most options a WVS question has)."""


class FactsError(ValueError):
    """`family.json` is unreadable or differs from the family and tokenizer it is loaded with."""


@dataclass(frozen=True)
class FamilyFacts:
    """The numbers scoring depends on, recorded at build time and checked at load."""

    family: str
    """Registry name."""
    image_token: str
    """The placeholder string the chat template emits."""
    image_token_id: int
    """Its token id."""
    tile_size: int
    """Side of one tile in pixels."""
    patch_size: int
    """Side of one vision patch in pixels."""
    grid_pinpoints: list[list[int]]
    """Allowed (height, width) canvases of the anyres grid."""
    image_mean: list[float]
    """Per-channel normalisation mean."""
    image_std: list[float]
    """Per-channel normalisation std."""
    vocab_size: int
    """Rows of the output head."""
    option_letter_ids: list[int]
    """Token ids of A, B, … (`CHECKED_LETTERS` of them) right after the answer prefix's "("."""
    pad_token_id: int
    """The id padded batches use."""

    def to_json(self) -> str:
        """Indented JSON, keys sorted."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> FamilyFacts:
        """Parse `family.json`; FactsError naming a missing or unknown field."""
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise FactsError(f"{FACTS_FILE} is not JSON: {error}") from error
        if not isinstance(raw, dict):
            raise FactsError(f"{FACTS_FILE} is not a JSON object")
        names = {f.name for f in fields(cls)}
        missing, unknown = sorted(names - set(raw)), sorted(set(raw) - names)
        if missing or unknown:
            raise FactsError(f"{FACTS_FILE}: missing fields {missing}, unknown fields {unknown}")
        return cls(**raw)


def family_facts(spec: FamilySpec, tokenizer: Any) -> FamilyFacts:
    """The facts of `spec` scored with `tokenizer` (transformers' or an `EngineTokenizer`)."""
    return FamilyFacts(
        family=spec.name,
        image_token=spec.image_token,
        image_token_id=int(tokenizer.convert_tokens_to_ids(spec.image_token)),
        tile_size=spec.tile_size,
        patch_size=spec.patch_size,
        grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
        image_mean=[float(v) for v in spec.image_mean],
        image_std=[float(v) for v in spec.image_std],
        vocab_size=spec.vocab_size,
        option_letter_ids=letter_token_ids(tokenizer, CHECKED_LETTERS),
        pad_token_id=pad_token_id(spec, tokenizer),
    )


def check_facts(recorded: FamilyFacts, expected: FamilyFacts) -> None:
    """FactsError naming the first field where the folder's facts differ from the expected."""
    for field in fields(FamilyFacts):
        found, wanted = getattr(recorded, field.name), getattr(expected, field.name)
        if json.dumps(found) != json.dumps(wanted):
            raise FactsError(
                f"{FACTS_FILE}: {field.name} is {found!r}, {expected.family} with this "
                f"tokenizer gives {wanted!r}"
            )
