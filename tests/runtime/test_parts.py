"""The part interface and its onnxruntime backend, on small graphs written here (no torch)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cvs_runtime.engine_manifest import (
    MANIFEST_FILE,
    EngineManifest,
    EngineMismatch,
    FileRecord,
    PartRecord,
    TensorRecord,
)
from cvs_runtime.ort_backend import OrtParts, OrtSessionConfig, process_memory, session_options
from cvs_runtime.parts import (
    PartError,
    PartRunner,
    cache_names,
    check_feeds,
    past_from_present,
    select_outputs,
)


def write_graphs(folder: Path) -> dict[str, Path]:
    """`scale`: y = 2·x (float); `lookup`: gathered rows of a weight read from external data."""
    folder.mkdir(parents=True, exist_ok=True)
    scale = helper.make_model(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            "scale",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
            [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    table.tofile(folder / "weights.bin")
    weight = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[10, 4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", "160")):
        weight.external_data.add(key=key, value=value)
    lookup = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Gather", ["table", "ids"], ["rows"]),
                helper.make_node("Identity", ["ids"], ["same_ids"]),
            ],
            "lookup",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
            [
                helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", "seq", 4]),
                helper.make_tensor_value_info("same_ids", TensorProto.INT64, ["batch", "seq"]),
            ],
            [weight],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    onnx.save(scale, str(folder / "scale.onnx"))
    onnx.save(lookup, str(folder / "lookup.onnx"))
    return {"scale": folder / "scale.onnx", "lookup": folder / "lookup.onnx"}


def write_manifest(folder: Path, precision: str = "fp32") -> None:
    files = []
    for path in sorted(folder.iterdir()):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(FileRecord(path.name, stat.st_size, stat.st_mtime_ns, digest))
    io = [TensorRecord("x", "float", ["batch", 3])]
    manifest = EngineManifest(
        family="toy",
        checkpoint_fingerprint="00",
        precision=precision,
        opset=18,
        exporter="onnx.helper",
        library_versions={},
        parts={
            "scale": PartRecord("scale.onnx", io, io),
            "lookup": PartRecord("lookup.onnx", [], []),
        },
        files=files,
        validation={"passed": True},
    )
    (folder / MANIFEST_FILE).write_text(manifest.to_json())


@pytest.fixture
def parts(tmp_path: Path) -> OrtParts:
    return OrtParts(write_graphs(tmp_path / "engine"))


def test_onnxruntime_parts_implement_the_part_interface(parts: OrtParts) -> None:
    assert isinstance(parts, PartRunner)
    assert parts.part_names == ("scale", "lookup")
    assert parts.input_names("lookup") == ("ids",)
    assert parts.output_names("lookup") == ("rows", "same_ids")
    assert parts.providers("scale") == ["CPUExecutionProvider"]


def test_run_returns_named_outputs_computed_from_external_weights(parts: OrtParts) -> None:
    out = parts.run("lookup", {"ids": np.array([[0, 9], [3, 3]])})
    assert set(out) == {"rows", "same_ids"}
    np.testing.assert_array_equal(out["rows"][0, 1], [36.0, 37.0, 38.0, 39.0])
    only = parts.run("lookup", {"ids": np.array([[1]])}, outputs=["rows"])
    assert list(only) == ["rows"]


def test_inputs_are_converted_to_the_graph_types(parts: OrtParts) -> None:
    out = parts.run("scale", {"x": np.array([[1, 2, 3]], dtype=np.int32)})
    assert out["y"].dtype == np.float32 and out["y"].tolist() == [[2.0, 4.0, 6.0]]
    ids = parts.run("lookup", {"ids": np.array([[2]], dtype=np.int32)})["same_ids"]
    assert ids.dtype == np.int64


def test_an_unknown_part_is_named_with_the_parts_there_are(parts: OrtParts) -> None:
    with pytest.raises(PartError, match="'decoder'") as raised:
        parts.run("decoder", {})
    assert "scale, lookup" in str(raised.value)  # the parts there are


def test_a_missing_input_is_named(parts: OrtParts) -> None:
    with pytest.raises(PartError, match=r"part scale: missing inputs \['x'\]"):
        parts.run("scale", {})


def test_an_unexpected_input_is_named(parts: OrtParts) -> None:
    x = np.zeros((1, 3), np.float32)
    with pytest.raises(PartError, match=r"part scale: unexpected inputs \['z'\]"):
        parts.run("scale", {"x": x, "z": x})


def test_an_unknown_output_is_named(parts: OrtParts) -> None:
    with pytest.raises(PartError, match=r"no outputs \['logits'\]"):
        parts.run("scale", {"x": np.zeros((1, 3), np.float32)}, outputs=["logits"])


def test_sharing_weight_pages_disables_prepacking() -> None:
    shared = session_options(OrtSessionConfig(share_weight_pages=True))
    assert shared.get_session_config_entry("session.disable_prepacking") == "1"
    private = session_options(OrtSessionConfig(share_weight_pages=False))
    with pytest.raises(Exception, match="disable_prepacking"):
        private.get_session_config_entry("session.disable_prepacking")


def test_prepacking_is_on_for_the_suffix_part_only_by_default() -> None:
    config = OrtSessionConfig()
    suffix = session_options(config, "suffix", cpu=True)
    with pytest.raises(Exception, match="disable_prepacking"):
        suffix.get_session_config_entry("session.disable_prepacking")
    for part in ("vision", "decoder"):
        options = session_options(config, part, cpu=True)
        assert options.get_session_config_entry("session.disable_prepacking") == "1"


def test_cpu_sessions_share_one_arena_unless_asked_not_to() -> None:
    shared = session_options(OrtSessionConfig(), "decoder", cpu=True)
    assert shared.get_session_config_entry("session.use_env_allocators") == "1"
    own = session_options(OrtSessionConfig(shared_arena=False), "decoder", cpu=True)
    with pytest.raises(Exception, match="use_env_allocators"):
        own.get_session_config_entry("session.use_env_allocators")


def test_open_checks_the_manifest_first(tmp_path: Path) -> None:
    folder = tmp_path / "engine"
    write_graphs(folder)
    write_manifest(folder)
    opened = OrtParts.open(folder, family="toy", precision="fp32")
    assert opened.manifest is not None and set(opened.part_names) == {"scale", "lookup"}
    with pytest.raises(EngineMismatch) as raised:
        OrtParts.open(folder, precision="fp16")
    assert raised.value.field == "precision"
    (folder / "weights.bin").write_bytes(b"\0" * 160)  # same size, new mtime
    with pytest.raises(EngineMismatch, match="modified since build"):
        OrtParts.open(folder)


def test_cache_names_and_renaming_present_to_past() -> None:
    assert cache_names(2, "past") == ("past.0.key", "past.0.value", "past.1.key", "past.1.value")
    outputs = {"logits": np.zeros(1), "present.0.key": np.ones(1), "present.0.value": np.ones(2)}
    renamed = past_from_present(outputs)
    assert set(renamed) == {"past.0.key", "past.0.value"}
    assert renamed["past.0.value"] is outputs["present.0.value"]


def test_check_feeds_names_both_missing_and_unexpected() -> None:
    with pytest.raises(PartError, match=r"missing inputs \['a'\], unexpected inputs \['c'\]"):
        check_feeds("p", ["a", "b"], {"b": np.zeros(1), "c": np.zeros(1)})


def test_process_memory_reads_rss_pss_and_uss() -> None:
    # Measured on a fresh child process: in the test process itself, freed pages the allocator
    # reuses can absorb a new block without any change in USS.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, numpy as np\nprint(flush=True)\nsys.stdin.readline()\n"
         "block = np.ones(64 * 2**20 // 8)\nprint(flush=True)\nsys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdout.readline()  # numpy is imported
        before = process_memory(child.pid)
        assert 0 < before.uss <= before.rss and 0 < before.pss <= before.rss
        child.stdin.write("\n")
        child.stdin.flush()
        child.stdout.readline()  # it has touched a 64 MiB private block
        after = process_memory(child.pid)
        assert after.uss - before.uss >= 48 * 2**20
        assert after.rss - before.rss >= 48 * 2**20
    finally:
        child.kill()
        child.wait()


def test_select_outputs_defaults_to_all_and_names_an_unknown_one() -> None:
    assert select_outputs("decoder", ("logits", "present.0.key"), None) == [
        "logits",
        "present.0.key",
    ]
    assert select_outputs("decoder", ("logits", "present.0.key"), ["logits"]) == ["logits"]
    with pytest.raises(PartError, match=r"part decoder has no outputs \['lgits'\]"):
        select_outputs("decoder", ("logits",), ["lgits"])
