"""Checkpoint folders: where they come from, their fingerprint, and loading any of them.

Every model, real or built, is an ordinary Hugging Face folder (config.json, safetensors
weights, tokenizer files, chat template, processor config) loaded by one code path,
`load_model`, which refuses what it cannot trust, each with a one-line reason:
- a folder that is not a checkpoint, or whose weights are only pickles (`*.bin`, `*.pt`);
- a config that is not the family's (another text model, other sizes or token ids);
- weights whose names differ from the model's in any way (missing or unexpected tensors:
  transformers can silently leave a vision tower random), checked on the file headers before
  loading and again on transformers' own loading report, then compared by value (all tensors
  up to 2 GiB of weights, the first of each component beyond);
- a tokenizer whose image token or option letters (A…J, one token each after "(") are wrong.

`ensure_checkpoint` gives real families' folders back as passed (`--weights`) and builds tiny
and smol ones on first use into `$CVS_CACHE/models/<name>/` (with the builders in
`checkpoint_build` and `smol`): in a temporary folder renamed into place under a lock, with a
`cvs_build.json` recording the recipe hash; a changed recipe (spec or build code) rebuilds, an
unchanged one is reused. Torch and transformers are imported here; callers import this module
lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from cvs_families.checkpoint_facts import (
    FINGERPRINT_FILES,
    CheckpointError,
    checkpoint_fingerprint,
    letter_token_ids,
    pad_token_id,
)
from cvs_families.paths import cache_dir
from cvs_families.spec import FamilySpec, config_to_dict

BUILD_FORMAT_VERSION = 1
"""Bump when the build code changes what it writes: every cached build is then rebuilt."""
BUILD_INFO = "cvs_build.json"
"""Written last into a built folder: recipe hash, fingerprint, build time, versions."""
METADATA_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "architectures", "use_cache"}
)
"""Config keys that describe a file, not a model: ignored when matching a family."""


@dataclass
class LoadedModel:
    """A family's model and tokenizer, loaded and checked, ready for the reference scorer."""

    model: Any
    """`LlavaNextForConditionalGeneration` in eval mode."""
    tokenizer: Any
    """`PreTrainedTokenizerFast` (transformers' tokenizers backend)."""
    spec: FamilySpec
    """The family it was checked against."""
    path: Path
    """The checkpoint folder."""
    fingerprint: str
    """`checkpoint_fingerprint(path)`: travels with every result computed from this model."""


# Building -------------------------------------------------------------------------------------


def recipe_hash(spec: FamilySpec) -> str:
    """Hash of everything a built checkpoint depends on; a change means rebuild."""
    if spec.build is None:
        raise CheckpointError(f"{spec.name} is not built by the project (kind {spec.kind})")
    payload: dict[str, Any] = {
        "format": BUILD_FORMAT_VERSION,
        "config": config_to_dict(spec.config),
        "chat_template": spec.chat_template,
        "image_token": spec.image_token,
        "build": dataclasses.asdict(spec.build),
    }
    # The build code itself: an edit to how checkpoints are made must not reuse old builds.
    builder_module = spec.build.builder.partition(":")[0]
    sources = {builder_module, "cvs_families.checkpoint_build", "cvs_families.tokenizers_offline"}
    for module in sorted(sources):
        source = Path(str(import_module(module).__file__)).read_bytes()
        payload[f"source:{module}"] = hashlib.sha256(source).hexdigest()
    if spec.build.tokenizer is not None:
        from cvs_families.tokenizers_offline import training_corpus

        payload["corpus"] = hashlib.sha256("\n".join(training_corpus()).encode()).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _resolve(target: str) -> Callable[[FamilySpec, Path], None]:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def _is_current(folder: Path, wanted: str) -> bool:
    info = folder / BUILD_INFO
    if not info.is_file():
        return False
    try:
        return bool(json.loads(info.read_text())["recipe"] == wanted)
    except (ValueError, KeyError):
        return False


@contextlib.contextmanager
def _build_lock(models: Path, name: str) -> Iterator[None]:
    """One builder per name at a time, across processes (others wait, then reuse)."""
    with (models / f".{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_checkpoint(spec: FamilySpec, weights: Path | None = None) -> Path:
    """The checkpoint folder for `spec`: `weights` if given, else the project-built one.

    Real families need `weights` (a local HF folder; nothing is downloaded). Tiny and smol are
    built on first use into `$CVS_CACHE/models/<name>/` (in a temporary folder, renamed into
    place) and rebuilt when their recipe changed.
    """
    if weights is not None:
        folder = Path(weights).expanduser().resolve()
        check_checkpoint_folder(folder)
        return folder
    if spec.build is None:
        raise CheckpointError(
            f"{spec.name} needs its weights: pass --weights DIR, a local copy of {spec.hf_id} "
            "(nothing is downloaded here)"
        )
    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / spec.name
    wanted = recipe_hash(spec)
    if _is_current(target, wanted):
        return target
    with _build_lock(models, spec.name):
        if _is_current(target, wanted):  # another process built it while we waited
            return target
        scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}.build-", dir=models))
        scratch.chmod(0o755)
        try:
            started = time.perf_counter()
            _resolve(spec.build.builder)(spec, scratch)
            info = {
                "recipe": wanted,
                "family": spec.name,
                "fingerprint": checkpoint_fingerprint(scratch),
                "build_seconds": round(time.perf_counter() - started, 3),
                "torch": torch.__version__,
                "transformers": _transformers_version(),
            }
            (scratch / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
            if target.exists():
                stale = models / f".{spec.name}.stale-{os.getpid()}"
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports from transformers (we check loading ourselves)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# Loading --------------------------------------------------------------------------------------


def check_checkpoint_folder(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, or a CheckpointError saying what is wrong.

    A sharded checkpoint's files are the ones its `model.safetensors.index.json` names.
    """
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: expected a Hugging Face checkpoint folder")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no config.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{index} is not a safetensors index: {error}") from None
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:
            raise CheckpointError(f"{path} lacks shards its index names: {', '.join(missing[:3])}")
        return [path / shard for shard in shards]
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if pickles:
            raise CheckpointError(
                f"{path} holds only pickle weights ({', '.join(pickles[:3])}): refusing to load "
                "pickles; convert them to safetensors"
            )
        raise CheckpointError(f"{path} is not a checkpoint: it has no *.safetensors weights")
    return weights


def _normalised_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config with transformers' defaults filled in, for comparing like with like."""
    from transformers import LlavaNextConfig

    plain = config_to_dict(config)
    plain.pop("auto_map", None)
    return dict(LlavaNextConfig(**plain).to_dict())


def _config_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    from cvs_families.spec import flatten_config

    want, have = flatten_config(expected), flatten_config(found)
    differences = []
    for key in sorted(set(want) | set(have)):
        if key.rsplit(".", 1)[-1] in METADATA_CONFIG_KEYS:
            continue
        if want.get(key) != have.get(key):
            differences.append(f"{key} is {have.get(key)!r} (expected {want.get(key)!r})")
    return differences


def check_config(spec: FamilySpec, path: Path) -> dict[str, Any]:
    """The checkpoint's config.json, checked to be this family's (same model, same sizes)."""
    try:
        found = json.loads((path / "config.json").read_text("utf-8"))
    except ValueError as error:
        raise CheckpointError(f"{path}/config.json is not valid JSON: {error}") from None
    if found.get("model_type") != "llava_next":
        raise CheckpointError(
            f"{path} is a {found.get('model_type')!r} checkpoint, not LLaVA-NeXT ({spec.name})"
        )
    expected_text = spec.text_config.get("model_type")
    found_text = found.get("text_config", {}).get("model_type")
    if found_text != expected_text:
        raise CheckpointError(
            f"{path} is not a {spec.name} checkpoint: its text model is {found_text!r}, "
            f"{spec.name} has {expected_text!r}"
        )
    differences = _config_differences(_normalised_config(spec.config), _normalised_config(found))
    if differences:
        shown = "; ".join(differences[:4]) + ("; …" if len(differences) > 4 else "")
        raise CheckpointError(f"{path} is not a {spec.name} checkpoint: {shown}")
    return dict(found)


def canonical_weight_name(name: str) -> str:
    """A weight name independent of transformers' layout version (4.x files vs 5.x modules).

    "language_model.model.layers.0.…" (4.x) and "model.language_model.layers.0.…" (5.x) both
    become "layers.0.…"; the CLIP "vision_model" level is dropped likewise.
    """
    dropped = {"model", "language_model", "vision_model"}
    return ".".join(part for part in name.split(".") if part not in dropped)


def stored_weight_names(files: list[Path]) -> dict[str, Path]:
    """Tensor name → file, read from the safetensors headers only."""
    from safetensors import safe_open

    names: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                if name in names:
                    raise CheckpointError(f"tensor {name} appears in {names[name]} and {file}")
                names[name] = file
    return names


def expected_weight_names(config: Mapping[str, Any]) -> set[str]:
    """Canonical names of the tensors a model of this config stores (tied ones once)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**config_to_dict(config)))
    seen: set[int] = set()
    names = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:  # a tied weight is stored once
            continue
        seen.add(id(tensor))
        names.add(canonical_weight_name(name))
    return names


def check_weight_names(spec: FamilySpec, files: list[Path]) -> dict[str, Path]:
    """Refuse weights with any missing or unexpected tensor (compared by canonical name)."""
    stored = stored_weight_names(files)
    canonical = {canonical_weight_name(n): n for n in stored}
    expected = expected_weight_names(spec.config)
    missing = sorted(expected - canonical.keys())
    unexpected = sorted(canonical.keys() - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(
            f"{files[0].parent} weights do not match {spec.name}: {'; '.join(parts)}"
        )
    return {canonical_weight_name(n): f for n, f in stored.items()}


def _check_loaded_values(model: Any, stored: dict[str, Path], path: Path, every: bool) -> None:
    """Compare loaded parameters with the files: all of them, or the first of each component.

    The file's tensor is cast to the parameter's dtype first (a float16 checkpoint loaded as
    bfloat16 must equal its own cast, not the float16 values).
    """
    from safetensors import safe_open

    by_canonical = {canonical_weight_name(n): t for n, t in model.state_dict().items()}
    names = sorted(stored)
    if not every:
        firsts: dict[str, str] = {}
        for name in names:
            firsts.setdefault(name.split(".")[0], name)
        names = sorted(firsts.values())
    for file in sorted({stored[name] for name in names}):
        with safe_open(str(file), framework="pt") as handle:
            original = {canonical_weight_name(k): k for k in handle.keys()}  # noqa: SIM118
            for name in (n for n in names if stored[n] == file):
                loaded = by_canonical[name].detach().to("cpu")
                on_disk = handle.get_tensor(original[name]).to(loaded.dtype)
                if not torch.equal(loaded, on_disk):
                    raise CheckpointError(
                        f"{path}: parameter {name} differs from the file after loading "
                        "(transformers left it uninitialised or remapped it)"
                    )


def _check_tokenizer(spec: FamilySpec, tokenizer: Any, path: Path) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError(f"{path}: no fast tokenizer (tokenizer.json) could be loaded")
    image_id = tokenizer.convert_tokens_to_ids(spec.image_token)
    if image_id != spec.image_token_id:
        raise CheckpointError(
            f"{path}: the tokenizer maps {spec.image_token!r} to {image_id}, "
            f"{spec.name} expects {spec.image_token_id}"
        )
    letter_token_ids(tokenizer, 10)
    template = getattr(tokenizer, "chat_template", None)
    if template and template != spec.chat_template:
        warnings.warn(
            f"{path}: its chat template differs from {spec.name}'s; prompts use the family's",
            stacklevel=3,
        )


def load_model(
    spec: FamilySpec, path: Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> LoadedModel:
    """Load a checkpoint folder as `spec`, refusing anything that does not match it exactly."""
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    path = Path(path)
    files = check_checkpoint_folder(path)
    check_config(spec, path)
    stored = check_weight_names(spec, files)
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        model, info = LlavaNextForConditionalGeneration.from_pretrained(
            path,
            dtype=dtype,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
            device_map={"": device},
        )
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise CheckpointError(f"{path}: transformers reported loading problems: {problems}")
    if spec.config.get("tie_word_embeddings") and (
        model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    ):
        raise CheckpointError(f"{path}: the output head is not tied to the embedding")
    total_bytes = sum(f.stat().st_size for f in files)
    _check_loaded_values(model, stored, path, every=total_bytes < 2 * 2**30)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    _check_tokenizer(spec, tokenizer, path)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        path=path,
        fingerprint=checkpoint_fingerprint(path),
    )


def load_tokenizer(spec: FamilySpec, path: Path) -> Any:
    """The checkpoint's tokenizer alone (for engines, which need no torch weights), after the
    same folder, config and tokenizer checks `load_model` makes."""
    from transformers import AutoTokenizer

    path = Path(path)
    check_checkpoint_folder(path)
    check_config(spec, path)
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    _check_tokenizer(spec, tokenizer, path)
    return tokenizer


__all__ = [
    "FINGERPRINT_FILES",
    "CheckpointError",
    "LoadedModel",
    "check_checkpoint_folder",
    "checkpoint_fingerprint",
    "ensure_checkpoint",
    "letter_token_ids",
    "load_model",
    "load_tokenizer",
    "pad_token_id",
]
