"""Building, fingerprinting and loading checkpoints; every refusal has its own test."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cvs_families.checkpoint import (
    BUILD_INFO,
    CheckpointError,
    LoadedModel,
    checkpoint_fingerprint,
    ensure_checkpoint,
    load_model,
)
from cvs_families.checkpoint_build import build_tiny_checkpoint
from cvs_families.registry import get_family
from cvs_families.spec import FamilySpec

TINY = ["tiny-vicuna", "tiny-yi", "tiny-qwen"]


@pytest.fixture(scope="session")
def built() -> dict[str, Path]:
    """The tiny checkpoints in $CVS_CACHE, built once (reused when the recipe is unchanged)."""
    return {name: ensure_checkpoint(get_family(name)) for name in TINY}


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoint"
    shutil.copytree(source, target)
    return target


def _rewrite_weights(folder: Path, edit: dict[str, torch.Tensor | None]) -> None:
    """Replace (tensor), add (new name) or drop (None) tensors of model.safetensors."""
    file = folder / "model.safetensors"
    tensors = load_file(str(file))
    for name, tensor in edit.items():
        if tensor is None:
            del tensors[name]
        else:
            tensors[name] = tensor
    save_file(tensors, str(file), metadata={"format": "pt"})


def _logits(loaded: LoadedModel, text: str) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits[0, -1]


@pytest.mark.parametrize("name", TINY)
def test_tiny_builds_into_the_cache_and_loads(name: str, built: dict[str, Path]) -> None:
    spec = get_family(name)
    folder = built[name]
    assert folder.parent.name == "models" and folder.name == name
    for required in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (folder / required).is_file(), required
    loaded = load_model(spec, folder)
    assert loaded.spec is spec and loaded.path == folder
    assert type(loaded.model).__name__ == "LlavaNextForConditionalGeneration"
    assert not loaded.model.training
    assert loaded.tokenizer.is_fast
    info = json.loads((folder / BUILD_INFO).read_text())
    assert loaded.fingerprint == info["fingerprint"] == checkpoint_fingerprint(folder)
    assert sum(p.numel() for p in loaded.model.parameters()) < 2_000_000


def test_two_builds_give_the_same_fingerprint(tmp_path: Path, built: dict[str, Path]) -> None:
    for name in TINY:
        first, second = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        first.mkdir()
        second.mkdir()
        build_tiny_checkpoint(get_family(name), first)
        build_tiny_checkpoint(get_family(name), second)
        assert checkpoint_fingerprint(first) == checkpoint_fingerprint(second)
        assert checkpoint_fingerprint(first) == checkpoint_fingerprint(built[name])


def test_another_seed_gives_another_fingerprint(tmp_path: Path) -> None:
    spec = get_family("tiny-yi")
    assert spec.build is not None
    reseeded = dataclasses.replace(spec, build=dataclasses.replace(spec.build, seed=1))
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    build_tiny_checkpoint(spec, first)
    build_tiny_checkpoint(reseeded, second)
    assert checkpoint_fingerprint(first) != checkpoint_fingerprint(second)


def test_a_changed_recipe_rebuilds_and_an_unchanged_one_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CVS_CACHE", str(tmp_path / "cache"))
    spec = get_family("tiny-qwen")
    assert spec.build is not None
    folder = ensure_checkpoint(spec)
    first = checkpoint_fingerprint(folder)
    stamp = (folder / BUILD_INFO).stat().st_mtime_ns
    assert ensure_checkpoint(spec) == folder
    assert (folder / BUILD_INFO).stat().st_mtime_ns == stamp  # reused, not rebuilt
    reseeded = dataclasses.replace(spec, build=dataclasses.replace(spec.build, seed=5))
    assert ensure_checkpoint(reseeded) == folder
    assert checkpoint_fingerprint(folder) != first
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".tiny-qwen.b")]
    assert leftovers == []


def test_concurrent_first_uses_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    from cvs_families import checkpoint_build

    monkeypatch.setenv("CVS_CACHE", str(tmp_path / "cache"))
    real_builder = checkpoint_build.build_tiny_checkpoint
    calls: list[int] = []

    def slow_counting_builder(spec: FamilySpec, out_dir: Path) -> None:
        calls.append(1)
        time.sleep(0.5)  # long enough for the other threads to arrive while it builds
        real_builder(spec, out_dir)

    monkeypatch.setattr(checkpoint_build, "build_tiny_checkpoint", slow_counting_builder)
    spec = get_family("tiny-qwen")
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_checkpoint(spec))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 3 and len(set(results)) == 1
    assert (results[0] / BUILD_INFO).is_file()


def test_real_family_without_weights_is_refused() -> None:
    with pytest.raises(CheckpointError, match="--weights"):
        ensure_checkpoint(get_family("yi34b"))


def test_real_family_takes_the_same_path_and_refuses_a_tiny_folder(
    built: dict[str, Path],
) -> None:
    # ensure_checkpoint accepts any checkpoint folder; load_model then checks it is a yi34b.
    folder = ensure_checkpoint(get_family("yi34b"), weights=built["tiny-yi"])
    assert folder == built["tiny-yi"].resolve()
    with pytest.raises(CheckpointError, match=r"not a yi34b checkpoint: .*hidden_size"):
        load_model(get_family("yi34b"), folder)


def test_a_qwen2_config_under_yi_is_refused(built: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"not a tiny-yi checkpoint: .*qwen2"):
        load_model(get_family("tiny-yi"), built["tiny-qwen"])


def test_a_config_with_changed_token_ids_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-vicuna"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_index"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="image_token_index is 5"):
        load_model(get_family("tiny-vicuna"), folder)


def test_a_non_llava_next_config_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-vicuna"], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config["text_config"]))
    with pytest.raises(CheckpointError, match="'llama' checkpoint, not LLaVA-NeXT"):
        load_model(get_family("tiny-vicuna"), folder)


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_model(get_family("tiny-yi"), tmp_path / "nowhere")


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_model(get_family("tiny-yi"), tmp_path)


def test_a_folder_without_weights_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-yi"], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        load_model(get_family("tiny-yi"), folder)


def test_pickle_weights_are_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-yi"], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(get_family("tiny-yi"), folder)


def test_a_missing_vision_tower_weight_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-yi"], tmp_path)
    _rewrite_weights(folder, {"vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": None})
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. vision_tower.encoder.layers.0"):
        load_model(get_family("tiny-yi"), folder)


def test_an_unexpected_weight_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-yi"], tmp_path)
    _rewrite_weights(folder, {"vision_tower.vision_model.extra_head.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_model(get_family("tiny-yi"), folder)


def test_weights_transformers_would_not_map_are_refused(
    built: dict[str, Path], tmp_path: Path
) -> None:
    # Same canonical name, but a layout transformers does not know: its loading report (or
    # the value check) must catch what the name check cannot.
    folder = _copy(built["tiny-yi"], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    renamed = {
        name.replace("vision_tower.vision_model.", "vision_tower.vision_model.vision_model."): t
        for name, t in tensors.items()
    }
    save_file(renamed, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"loading problems|differs from the file"):
        load_model(get_family("tiny-yi"), folder)


def test_a_wrong_image_token_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-qwen"], tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    for added in tokenizer["added_tokens"]:
        if added["content"] == "<image>":
            added["content"] = "<picture>"
    vocab = tokenizer["model"]["vocab"]
    vocab["<picture>"] = vocab.pop("<image>")
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match="maps '<image>'"):
        load_model(get_family("tiny-qwen"), folder)


def test_letters_that_are_not_one_token_are_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-vicuna"], tmp_path)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["▁(C"] = max(vocab.values()) + 1  # "(C" now merges into one piece
    tokenizer["model"]["merges"].append(["▁(", "C"])
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(CheckpointError, match="option letter 'C' is not one token"):
        load_model(get_family("tiny-vicuna"), folder)


def test_transformers_5_native_weight_names_load_to_the_same_model(
    built: dict[str, Path], tmp_path: Path
) -> None:
    spec = get_family("tiny-qwen")
    reference = load_model(spec, built["tiny-qwen"])
    folder = _copy(built["tiny-qwen"], tmp_path)
    native = {name: t.clone() for name, t in reference.model.state_dict().items()}
    (folder / "model.safetensors").unlink()
    save_file(native, str(folder / "model.safetensors"), metadata={"format": "pt"})
    reloaded = load_model(spec, folder)
    prompt = "<|im_start|>user\nHow important is family?<|im_end|>\n"
    assert torch.equal(_logits(reference, prompt), _logits(reloaded, prompt))


def _shard(folder: Path) -> dict[str, str]:
    """Split model.safetensors into two shards with an index, as large checkpoints come."""
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for number, part in enumerate((names[::2], names[1::2]), start=1):
        shard = f"model-0000{number}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


def test_a_sharded_checkpoint_loads_to_the_same_model(
    built: dict[str, Path], tmp_path: Path
) -> None:
    spec = get_family("tiny-vicuna")
    folder = _copy(built["tiny-vicuna"], tmp_path)
    _shard(folder)
    prompt = "USER: How important is family? ASSISTANT:"
    assert torch.equal(
        _logits(load_model(spec, built["tiny-vicuna"]), prompt),
        _logits(load_model(spec, folder), prompt),
    )


def test_an_index_naming_a_missing_shard_is_refused(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-vicuna"], tmp_path)
    _shard(folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks shards its index names"):
        load_model(get_family("tiny-vicuna"), folder)


def test_loading_in_bfloat16_checks_values_after_the_cast(built: dict[str, Path]) -> None:
    loaded = load_model(get_family("tiny-yi"), built["tiny-yi"], dtype=torch.bfloat16)
    assert loaded.model.get_input_embeddings().weight.dtype == torch.bfloat16


def test_fingerprint_follows_the_weights(built: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(built["tiny-yi"], tmp_path)
    before = checkpoint_fingerprint(folder)
    name = "multi_modal_projector.linear_1.bias"
    tensor = load_file(str(folder / "model.safetensors"))[name]
    _rewrite_weights(folder, {name: tensor + 1e-3})
    assert checkpoint_fingerprint(folder) != before


def test_fingerprint_of_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing to fingerprint"):
        checkpoint_fingerprint(tmp_path)


def test_spec_hash_ignores_its_mutable_looking_config() -> None:
    spec: FamilySpec = get_family("tiny-yi")
    assert hash(spec) == hash(get_family("tiny-yi"))
    assert {spec: 1}[get_family("tiny-yi")] == 1
