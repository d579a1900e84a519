"""Exported engines: the parity matrix (tiny families × parts × untraced shapes), the shared
weight file, and the graph-versus-spec check of dynamic axes."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from cvs_export.llava_next import part_specs, part_tensors
from cvs_export.onnx_export import (
    OPSET,
    TRANSPOSED,
    WEIGHTS_FILE,
    GraphSpecError,
    check_graph_dims,
    export_parts,
)
from cvs_export.parts import TensorSpec
from cvs_export.planner import plan_export
from cvs_export.validate import (
    TorchParts,
    build_material,
    case_label,
    compare,
    padding_validity,
    part_inputs,
    validation_set,
)
from cvs_families.reference import pad_token_for
from cvs_families.registry import get_family
from cvs_families.scoring_files import SCORING_FILES
from cvs_runtime.ort_backend import OrtParts

TINY_FAMILIES = ("tiny-vicuna", "tiny-yi", "tiny-qwen")
EXTRA_SIZES: Mapping[str, tuple[Mapping[str, int], ...]] = {
    "vision": ({"tiles": 3},),
    "embedding": ({"batch": 2, "seq": 17},),
    "decoder": ({"batch": 2, "seq": 6, "past": 5, "total": 11, "k": 2},),
    "suffix": ({"batch": 5, "seq": 9, "prefix": 13, "k": 2},),
}
"""Shapes beyond each spec's own check sizes, none of them traced."""


@dataclass(frozen=True)
class ParityCase:
    """One cell of the matrix: a family's part at one untraced shape, at fp32."""

    family: str
    part: str
    sizes: Mapping[str, int]

    @property
    def id(self) -> str:
        return f"{self.family}-{self.part}-{case_label(self.sizes).replace(' ', ',')}"


def parity_matrix() -> list[ParityCase]:
    cases = []
    for family in TINY_FAMILIES:
        for name, spec in part_specs(get_family(family).config).items():
            for sizes in (*spec.check_sizes, *EXTRA_SIZES[name]):
                assert any(sizes[a] != spec.trace_sizes[a] for a in sizes), "traced shape"
                cases.append(ParityCase(family, name, sizes))
    return cases


MATRIX = parity_matrix()


@pytest.fixture(scope="module")
def references(engine_shelf: Any) -> dict[str, tuple[Any, Any, Any]]:
    """Per family: engine sessions (opened through the manifest check), PyTorch parts, inputs."""
    out = {}
    for family in TINY_FAMILIES:
        built = engine_shelf(family)
        engine = OrtParts.open(built.folder, family=family, precision="fp32")
        reference = TorchParts(built.loaded.model, built.specs)
        vset = validation_set(built.loaded)
        material = build_material(reference, built.loaded.spec, vset, pad_token_for(built.loaded))
        out[family] = (engine, reference, material)
    return out


@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
def test_parity_at_untraced_shapes(
    case: ParityCase, engine_shelf: Any, references: dict[str, tuple[Any, Any, Any]]
) -> None:
    built = engine_shelf(case.family)
    engine, reference, material = references[case.family]
    spec = built.specs[case.part]
    inputs = part_inputs(spec, case.sizes, material, reference, built.loaded.spec)
    want = reference.run(case.part, inputs)
    got = engine.run(case.part, inputs)
    label = case_label(case.sizes)
    for name in spec.output_names:
        valid = padding_validity(spec, name, inputs, want[name].shape)
        result = compare(
            case.part, name, label, got[name], want[name], spec.tolerance("fp32"), valid
        )
        assert result.passed, result


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_engine_folder_is_at_most_1_1_times_one_weight_copy(family: str, engine_shelf: Any) -> None:
    built = engine_shelf(family)
    plan = plan_export(family, get_family(family).config)
    # The bound is on copies of the weights; the scoring files (tokenizer, template, facts) are
    # not weights and are counted apart (tens of kB here, a few MB for a real tokenizer).
    folder_bytes = sum(
        p.stat().st_size for p in built.folder.iterdir() if p.name not in SCORING_FILES
    )
    assert {p.name for p in built.folder.iterdir()} >= set(SCORING_FILES)
    weights_bytes = (built.folder / WEIGHTS_FILE).stat().st_size
    assert weights_bytes >= plan.weights_file_bytes  # every tensor is there …
    assert weights_bytes - plan.weights_file_bytes < 64 * 200  # … once (alignment slack only)
    assert folder_bytes <= 1.1 * plan.weights_file_bytes


def _graphs(folder: Path) -> dict[str, onnx.ModelProto]:
    return {
        p.stem: onnx.load(str(p), load_external_data=False) for p in sorted(folder.glob("*.onnx"))
    }


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_graphs_read_exactly_the_part_tensors_once_each_from_the_shared_file(
    family: str, engine_shelf: Any
) -> None:
    built = engine_shelf(family)
    locations: dict[str, tuple[int, int]] = {}
    for part, graph in _graphs(built.folder).items():
        assert graph.opset_import[0].version == OPSET
        external = [
            t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        sources = {t.name.removesuffix(TRANSPOSED) for t in external}
        assert sources == set(part_tensors(built.loaded.model, part)), part
        for tensor in external:
            info = {e.key: e.value for e in tensor.external_data}
            assert info["location"] == WEIGHTS_FILE
            where = (int(info["offset"]), int(info["length"]))
            assert locations.setdefault(tensor.name, where) == where  # same bytes in every graph
    spans = sorted(locations.values())
    assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(spans))  # no overlap


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_no_graph_transposes_a_weight_at_load(family: str, engine_shelf: Any) -> None:
    # A Transpose of an initializer would be folded by onnxruntime into a private copy per
    # session: weight pages could then never be shared.
    for part, graph in _graphs(engine_shelf(family).folder).items():
        weights = {t.name for t in graph.graph.initializer}
        offending = [
            n.name for n in graph.graph.node if n.op_type == "Transpose" and n.input[0] in weights
        ]
        assert offending == [], part


def _tied_model() -> Any:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(
        text_config={
            "model_type": "llama",
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 3000,
            "tie_word_embeddings": True,
        },
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        },
        image_grid_pinpoints=[[28, 56], [56, 28]],
        image_token_index=2999,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config).eval()


def test_a_tied_head_and_embedding_are_stored_once(tmp_path: Path) -> None:
    model = _tied_model()
    head = model.lm_head.weight
    assert head is model.model.language_model.embed_tokens.weight
    specs = part_specs(model.config)
    result = export_parts(model, {n: specs[n] for n in ("embedding", "decoder")}, tmp_path)
    table = "model.language_model.embed_tokens.weight"
    assert [k for k in result.weights if "embed_tokens" in k or "lm_head" in k] == [
        table + TRANSPOSED
    ]
    entry = result.weights[table + TRANSPOSED]
    assert entry.shape == (head.shape[1], head.shape[0])  # (hidden, vocab), read by both graphs
    assert table + TRANSPOSED in result.parts["embedding"].tensors
    assert table + TRANSPOSED in result.parts["decoder"].tensors
    decoder_params = sum(t.numel() * 4 for t in part_tensors(model, "decoder").values())
    assert result.weight_bytes < 1.01 * decoder_params  # the embedding adds nothing
    engine = OrtParts({n: tmp_path / p.file for n, p in result.parts.items()})
    ids = np.array([[5, 17, 2998, 0]])
    with torch.no_grad():
        want = model.model.language_model.embed_tokens(torch.from_numpy(ids)).numpy()
    np.testing.assert_array_equal(
        engine.run("embedding", {"input_ids": ids})["inputs_embeds"], want
    )
    sizes = specs["decoder"].check_sizes[1]
    inputs = {k: v.numpy() for k, v in specs["decoder"].dummy_inputs(sizes).items()}
    got = engine.run("decoder", inputs)["logits"]
    want = TorchParts(model, specs).run("decoder", inputs)["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _declared(spec: Any, tensor: str, shape: tuple[int | str, ...]) -> Any:
    inputs = tuple(
        dataclasses.replace(t, shape=shape) if t.name == tensor else t for t in spec.inputs
    )
    return dataclasses.replace(spec, inputs=inputs)


def test_a_dynamic_graph_axis_the_spec_declares_static_is_an_error(engine_shelf: Any) -> None:
    built = engine_shelf("tiny-yi")
    graph = ir.load(built.folder / "decoder.onnx")
    spec = built.specs["decoder"]
    hidden = spec.tensor("inputs_embeds").shape[2]
    check_graph_dims(graph, spec)  # as exported: consistent
    with pytest.raises(GraphSpecError, match="undeclared dynamic axis"):
        check_graph_dims(graph, _declared(spec, "inputs_embeds", ("batch", 11, hidden)))


def test_a_declared_dynamic_axis_the_graph_made_static_is_an_error(engine_shelf: Any) -> None:
    built = engine_shelf("tiny-yi")
    graph = ir.load(built.folder / "decoder.onnx")
    spec = built.specs["decoder"]
    with pytest.raises(GraphSpecError, match=r"declared dynamic \(k\) but the exporter made it"):
        check_graph_dims(graph, _declared(spec, "inputs_embeds", ("batch", "seq", "k")))


def test_a_graph_input_the_spec_does_not_list_is_an_error(engine_shelf: Any) -> None:
    built = engine_shelf("tiny-yi")
    graph = ir.load(built.folder / "vision.onnx")
    spec = built.specs["vision"]
    renamed = dataclasses.replace(
        spec, inputs=(TensorSpec("pixels", "float", spec.inputs[0].shape),)
    )
    with pytest.raises(GraphSpecError, match="graph inputs"):
        check_graph_dims(graph, renamed)
