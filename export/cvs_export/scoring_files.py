"""Writing an engine's scoring files: what lets a machine without torch or the checkpoint score.

Every build writes them into the engine folder before the manifest hashes it (the list and the
checks at load: `cvs_families.scoring_files`). The tokenizer written is transformers' own backend,
and the build checks that the folder's tokenizer renders and encodes probe prompts exactly as
transformers does before the engine is recorded. Engines built before this existed get the files
in place with `add_scoring_files` (`cvs-export add-scoring-files`), without re-exporting.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_families.engine_tokenizer import EngineTokenizer, special_tokens_config
from cvs_families.prompt_text import ANSWER_PREFIX, LETTERS
from cvs_families.scoring_files import (
    CHAT_TEMPLATE_FILE,
    FACTS_FILE,
    SCORING_FILES,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    family_facts,
)
from cvs_runtime.engine_manifest import EngineMismatch, read_manifest

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec

PROBE_TEXTS = (
    "Imagine you are a person from Türkiye (日本, Côte d'Ivoire).\n\nHow important is family?",
    "  leading and trailing spaces  \n(A) Very important\n(B) Rather important ",
)
"""User texts the build renders and encodes with both tokenizers; they must agree exactly."""


class ScoringFilesError(RuntimeError):
    """The folder's tokenizer does not reproduce transformers', or the files cannot be added."""


def write_scoring_files(folder: Path, spec: FamilySpec, tokenizer: Any) -> None:
    """Write the four scoring files of `spec` into `folder`, from transformers' `tokenizer`,
    then check that the written tokenizer agrees with it on probe prompts."""
    folder = Path(folder)
    (folder / TOKENIZER_FILE).write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    config = json.dumps(special_tokens_config(tokenizer), indent=2, sort_keys=True) + "\n"
    (folder / TOKENIZER_CONFIG_FILE).write_text(config, encoding="utf-8")
    (folder / CHAT_TEMPLATE_FILE).write_text(spec.chat_template, encoding="utf-8")
    (folder / FACTS_FILE).write_text(family_facts(spec, tokenizer).to_json(), encoding="utf-8")
    written = EngineTokenizer.from_files(folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE)
    check_same_tokenizer(spec, tokenizer, written)


def check_same_tokenizer(spec: FamilySpec, expected: Any, found: Any) -> None:
    """ScoringFilesError unless `found` renders and encodes the probe prompts as `expected`."""
    for text in PROBE_TEXTS:
        for with_image in (False, True):
            content = [{"type": "image"}] if with_image else []
            messages = [{"role": "user", "content": [*content, {"type": "text", "text": text}]}]
            rendered = [
                t.apply_chat_template(
                    messages,
                    chat_template=spec.chat_template,
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for t in (expected, found)
            ]
            if rendered[0] != rendered[1]:
                raise ScoringFilesError(
                    f"{spec.name}: the folder's chat template renders differently from "
                    f"transformers' ({rendered[1][:60]!r}… against {rendered[0][:60]!r}…)"
                )
            prompt = rendered[0] + " " + ANSWER_PREFIX
            probes = [prompt, *(prompt + letter for letter in LETTERS[:10])]
            for special in (False, True):
                ids = [
                    list(t(probes, add_special_tokens=special)["input_ids"])
                    for t in (expected, found)
                ]
                if [list(r) for r in ids[0]] != [list(r) for r in ids[1]]:
                    raise ScoringFilesError(
                        f"{spec.name}: the folder's tokenizer encodes a probe prompt differently "
                        f"from transformers' (add_special_tokens={special})"
                    )


def copy_scoring_files(source: Path, folder: Path) -> None:
    """Copy the scoring files of the engine in `source` into `folder` (a TensorRT build)."""
    for name in SCORING_FILES:
        if not (Path(source) / name).is_file():
            raise ScoringFilesError(
                f"{source}: no {name}: add the scoring files first (`cvs-export add-scoring-files`)"
            )
        shutil.copyfile(Path(source) / name, Path(folder) / name)


def add_scoring_files(folder: Path, spec: FamilySpec, weights: Path | None) -> list[str]:
    """Write the scoring files into the finished engine in `folder` and record them in its
    manifest (nothing re-exported). The checkpoint must be the one the engine was built from.
    Returns the names written."""
    from cvs_export.manifest import file_record, seal_if_unsealed, write_manifest
    from cvs_families.checkpoint import checkpoint_fingerprint, ensure_checkpoint, load_tokenizer

    folder = Path(folder)
    seal_if_unsealed(folder)  # an older engine: its files are verified before it is rewritten
    manifest = read_manifest(folder)
    if manifest.family != spec.name:
        raise EngineMismatch(
            "family", f"{folder}: engine of {manifest.family!r}, not {spec.name!r}"
        )
    checkpoint = ensure_checkpoint(spec, weights)
    fingerprint = checkpoint_fingerprint(checkpoint)
    if fingerprint != manifest.checkpoint_fingerprint:
        raise EngineMismatch(
            "checkpoint_fingerprint",
            f"{folder}: built from checkpoint {manifest.checkpoint_fingerprint[:12]}…, "
            f"{checkpoint} is {fingerprint[:12]}…: rebuild the engine instead",
        )
    write_scoring_files(folder, spec, load_tokenizer(spec, checkpoint))
    kept = [r for r in manifest.files if r.name not in SCORING_FILES]
    added = [file_record(folder, name) for name in SCORING_FILES]
    files = sorted([*kept, *added], key=lambda r: r.name)
    write_manifest(folder, replace(manifest, files=files))
    return list(SCORING_FILES)
