"""Opening an engine folder's scoring files: its tokenizer and family facts, checked.

An engine folder is scored without the checkpoint (`cvs_families.scoring_files` lists the files).
Before any scoring each file must be recorded in the manifest and hash to the recorded sha256
(they are small: hashing them costs milliseconds), and the recorded family facts must equal
those the installed family spec and the folder's tokenizer give. Any difference is one
`EngineMismatch` naming the file or field; an engine built before the files existed is refused
with the commands that add them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvs_families.checkpoint_facts import CheckpointError
from cvs_families.engine_tokenizer import EngineTokenizer
from cvs_families.scoring_files import (
    CHAT_TEMPLATE_FILE,
    FACTS_FILE,
    SCORING_FILES,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    FactsError,
    FamilyFacts,
    check_facts,
    family_facts,
)
from cvs_runtime.engine_manifest import EngineManifest, EngineMismatch

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec


@dataclass(frozen=True)
class ScoringFiles:
    """What scoring reads from an engine folder besides its graphs."""

    tokenizer: EngineTokenizer
    """The checkpoint's tokenizer (tokenizers + jinja2, no transformers)."""
    facts: FamilyFacts
    """The family's numbers as built, equal to the installed spec's."""


def open_scoring_files(
    folder: Path, manifest: EngineManifest, spec: FamilySpec, *, engines_root: Path | None = None
) -> ScoringFiles:
    """The checked scoring files of the engine in `folder` (whose manifest is `manifest`)."""
    folder = Path(folder)
    recorded = {r.name: r for r in manifest.files}
    absent = [name for name in SCORING_FILES if name not in recorded]
    if absent:
        root = f"--engines {engines_root} " if engines_root is not None else ""
        raise EngineMismatch(
            f"files.{absent[0]}",
            f"{folder}: engine refused: it has no {absent[0]} (built before engines carried "
            f"their tokenizer): add the files in place with `cvs-export add-scoring-files "
            f"{root}--model {manifest.family} --precision {manifest.precision}` or rebuild it "
            f"with `cvs-export build {root}--model {manifest.family} --precision "
            f"{manifest.precision}` (both need the checkpoint and the [export] extra)",
        )
    for name in SCORING_FILES:
        path = folder / name
        if not path.is_file():
            raise EngineMismatch(f"files.{name}", f"{folder}: engine file {name} is missing")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != recorded[name].sha256:
            raise EngineMismatch(
                f"files.{name}.sha256",
                f"{folder}: engine refused: {name} differs from the one recorded in its "
                f"manifest (sha256 {digest[:12]}…, {recorded[name].sha256[:12]}… recorded)",
            )
    template = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if template != spec.chat_template:
        raise EngineMismatch(
            f"files.{CHAT_TEMPLATE_FILE}",
            f"{folder}: engine refused: its {CHAT_TEMPLATE_FILE} is not {spec.name}'s chat "
            "template (built by another version of the family: rebuild it)",
        )
    try:
        tokenizer = EngineTokenizer.from_files(
            folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE
        )
        facts = FamilyFacts.from_json((folder / FACTS_FILE).read_text(encoding="utf-8"))
        check_facts(facts, family_facts(spec, tokenizer))
    except (FactsError, CheckpointError) as error:
        raise EngineMismatch(FACTS_FILE, f"{folder}: engine refused: {error}") from error
    except (ValueError, OSError) as error:  # tokenizers' own parse errors are plain exceptions
        raise EngineMismatch(
            f"files.{TOKENIZER_FILE}", f"{folder}: engine refused: {TOKENIZER_FILE}: {error}"
        ) from error
    return ScoringFiles(tokenizer=tokenizer, facts=facts)
