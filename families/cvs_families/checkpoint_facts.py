"""What can be known about a checkpoint without torch: its fingerprint and its tokenizer facts.

Scoring on an engine needs no torch and no transformers (an edge install has neither), yet it
must name the checkpoint an engine came from and check the tokenizer it scores with. These
functions are that torch-free half of `cvs_families.checkpoint`, which re-exports them; they take
any tokenizer with the transformers call subset (`transformers` or
`cvs_families.engine_tokenizer.EngineTokenizer`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvs_families.paths import cache_dir
from cvs_families.prompt_text import ANSWER_PREFIX, LETTERS

if TYPE_CHECKING:
    from cvs_families.spec import FamilySpec

FINGERPRINT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
"""Non-weight files the fingerprint covers (when present), besides every `*.safetensors`."""
LARGE_FILE_BYTES = 64 * 2**20
"""Files above this size have their digest remembered under $CVS_CACHE by (path, size, mtime)."""


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, unsafe, or not the family's: the message says why."""


def file_digest(path: Path) -> str:
    """sha256 of one file, cached under $CVS_CACHE by (path, size, mtime) for large weights."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    cached = cache_dir() / "fingerprints" / f"{key}.sha256"
    if stat.st_size > LARGE_FILE_BYTES and cached.is_file():
        return cached.read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**24), b""):
            digest.update(block)
    hexdigest = digest.hexdigest()
    if stat.st_size > LARGE_FILE_BYTES:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(hexdigest + "\n")
    return hexdigest


def checkpoint_fingerprint(path: Path) -> str:
    """sha256 over the config, every safetensors file and the tokenizer files, by name."""
    files = sorted(p for p in Path(path).glob("*.safetensors"))
    files += sorted(
        Path(path) / name for name in FINGERPRINT_FILES if (Path(path) / name).is_file()
    )
    if not files:
        raise CheckpointError(f"{path}: nothing to fingerprint (no config or weights)")
    total = hashlib.sha256()
    for file in files:
        total.update(f"{file.name}\0{file_digest(file)}\n".encode())
    return total.hexdigest()


def letter_token_ids(tokenizer: Any, n: int, answer_prefix: str = ANSWER_PREFIX) -> list[int]:
    """Token ids of the first `n` option letters at the survey prompt's answer position (right
    after `ANSWER_PREFIX`'s "(").

    Raises CheckpointError when a letter is not exactly one token there (the prompt could not
    end right before it).
    """
    if n > len(LETTERS):
        raise CheckpointError(f"only {len(LETTERS)} option letters exist, {n} asked")
    prefix = tokenizer.encode(answer_prefix, add_special_tokens=False)
    ids = []
    for letter in LETTERS[:n]:
        full = tokenizer.encode(answer_prefix + letter, add_special_tokens=False)
        if len(full) != len(prefix) + 1 or full[: len(prefix)] != prefix:
            pieces = tokenizer.convert_ids_to_tokens(full[len(prefix) - 1 :])
            raise CheckpointError(f"option letter {letter!r} is not one token after '(': {pieces}")
        ids.append(int(full[-1]))
    return ids


def pad_token_id(spec: FamilySpec, tokenizer: Any) -> int:
    """A pad id that is a real token and not the image token (its value is masked anyway)."""
    pad = tokenizer.pad_token_id
    if pad is None or pad == spec.image_token_id:
        pad = spec.text_config.get("pad_token_id")
    if pad is None or pad == spec.image_token_id:
        pad = 0 if spec.image_token_id != 0 else 1
    return int(pad)
