"""The benchmark's machine facts, GEMM ceilings, reports and the GPU script's CPU smoke mode."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvs_evaluator.bench.machine import (
    KERNEL_FLAGS,
    cpu_flags,
    cpu_model,
    gemm_ceilings,
    int8_dot_product,
)
from cvs_evaluator.bench.report import markdown_table, share_of_ceiling, write_reports

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx512_vnni amx_int8 avx2 fma avx512f avx512bw amx_tile f16c avx512_bf16 \
amx_bf16 avx_vnni sse4_2
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
"""


def test_cpu_flags_keeps_the_kernel_flags_in_their_fixed_order() -> None:
    assert cpu_flags(SAPPHIRE_RAPIDS) == list(KERNEL_FLAGS)
    assert cpu_flags("flags\t: sse2 avx2 fma ssse3\n") == ["fma", "avx2"]
    assert cpu_flags("") == []
    here = cpu_flags()  # this machine: whatever it has, a subset in KERNEL_FLAGS order
    assert here == [flag for flag in KERNEL_FLAGS if flag in here]


def test_cpu_model_reads_the_model_name() -> None:
    assert cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_model("processor\t: 0\n")  # no model name: platform's answer, never empty


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8"], "amx"),
        (["amx_tile", "amx_bf16", "avx512_vnni"], "avx512_vnni"),  # AMX without its int8 unit
        (["avx2", "avx512_vnni", "avx_vnni"], "avx512_vnni"),
        (["fma", "avx2", "avx_vnni"], "avx_vnni"),
        (["fma", "f16c", "avx2"], "none"),
        ([], "none"),
    ],
)
def test_int8_dot_product_picks_the_best_present(flags: list[str], expected: str) -> None:
    assert int8_dot_product(flags) == expected


def test_gemm_ceilings_measures_fp32_and_int8_and_restores_threads() -> None:
    import torch

    before = torch.get_num_threads()
    ceilings, sources = gemm_ceilings(threads=1, n=128, repeats=2)
    assert torch.get_num_threads() == before
    assert set(ceilings) == set(sources) == {"fp32", "bf16", "int8"}
    for key in ("fp32", "int8"):
        value = ceilings[key]
        assert value is not None and math.isfinite(value) and value > 0.0
    assert sources["fp32"] == "torch.matmul float32 n=128"
    assert sources["int8"] == "onnxruntime MatMulInteger u8×s8→i32 n=128 (prepacked B)"
    bf16 = ceilings["bf16"]
    if bf16 is None:
        assert sources["bf16"].startswith("not measured")
    else:
        assert math.isfinite(bf16) and bf16 > 0.0


def _variant(name: str, condition: str, precision: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "condition": condition,
        "precision": precision,
        "items": 24,
        "items_per_s": None,
        "ratio_vs_study_loop": None,
        "ratio_vs_torch_reference": None,
        "peak_rss_bytes": 512 * 2**20,
        "max_abs_dlogprob_vs_study_loop": None,
        "mean_js_vs_study_loop": None,
        "max_js_vs_study_loop": None,
        "top1_vs_study_loop": None,
        "mean_js_vs_ort_fp32": None,
        "top1_vs_ort_fp32": None,
        "gflops_achieved": None,
        "extra_key_ignored": [1, 2],
    }
    row.update(values)
    return row


@pytest.fixture
def results() -> dict[str, Any]:
    return {
        "machine": "Test CPU 9000",
        "cpu_flags": ["fma", "avx2", "avx512_vnni"],
        "versions": {"onnxruntime": "1.32.0", "torch": "2.13.0"},
        "commit": "0123abc",
        "threads": 2,
        "ceilings_gflops": {"fp32": 80.0, "bf16": None, "int8": 160.0},
        "ceilings_source": {
            "fp32": "torch.matmul float32 n=2048",
            "bf16": "not measured: no kernel",
            "int8": "onnxruntime MatMulInteger u8×s8→i32 n=2048 (prepacked B)",
        },
        "variants": [
            _variant(
                "study-loop",
                "text",
                "fp32",
                items_per_s=0.5,
                ratio_vs_study_loop=1.0,
                ratio_vs_torch_reference=0.25,
                gflops_achieved=10.0,
            ),
            _variant(
                "ort-fp32",
                "image",
                "fp32",
                items_per_s=6.17,
                ratio_vs_study_loop=12.34,
                ratio_vs_torch_reference=3.0,
                gflops_achieved=30.0,
                max_abs_dlogprob_vs_study_loop=1.5e-5,
                mean_js_vs_study_loop=0.0012345,
                max_js_vs_study_loop=0.004,
                top1_vs_study_loop=0.9583,
            ),
            _variant(
                "ort-int8-wo",
                "image",
                "int8-wo",
                items_per_s=9.0,
                ratio_vs_study_loop=18.0,
                gflops_achieved=40.0,
                mean_js_vs_ort_fp32=0.02,
                top1_vs_ort_fp32=0.875,
            ),
        ],
    }


def _rows(markdown: str) -> dict[tuple[str, str], dict[str, str]]:
    """Table rows by (variant, condition) → {header: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]

    def cells(line: str) -> list[str]:
        parts = line.replace("\\|", "\0").strip().strip("|").split("|")
        return [part.strip().replace("\0", "|") for part in parts]

    headers = cells(lines[0])
    rows = [dict(zip(headers, cells(line), strict=True)) for line in lines[2:]]
    return {(row["variant"], row["condition"]): row for row in rows}


def test_markdown_table_has_a_row_per_variant_with_ratios_blanks_and_ceiling_shares(
    results: dict[str, Any],
) -> None:
    markdown = markdown_table(results)
    header = markdown.splitlines()[0]
    for fact in ("Test CPU 9000", "fma avx2 avx512_vnni", "avx512_vnni", "2 threads", "80.0"):
        assert fact in header
    assert "bf16 not measured" in header and "int8 160 GFLOP/s" in header
    assert "0123abc" in markdown and "torch 2.13.0" in markdown

    rows = _rows(markdown)
    assert set(rows) == {("study-loop", "text"), ("ort-fp32", "image"), ("ort-int8-wo", "image")}
    fp32 = rows[("ort-fp32", "image")]
    assert fp32["× study loop"] == "12.3×"
    assert fp32["× torch reference"] == "3.00×"
    assert fp32["% of ceiling"] == "37.5%"  # 30 / 80 GFLOP/s, by hand
    assert fp32["top-1 vs study loop"] == "95.8%"
    assert fp32["mean JS vs study loop"] == "0.00123"
    assert fp32["max |Δ log-prob| vs study loop"] == "1.50e-05"
    assert fp32["peak RSS MiB"] == "512"
    assert fp32["mean JS vs ort-fp32"] == "" and fp32["top-1 vs ort-fp32"] == ""
    int8 = rows[("ort-int8-wo", "image")]
    assert int8["% of ceiling"] == "25.0%"  # against the int8 ceiling: 40 / 160
    assert int8["× torch reference"] == "" and int8["mean JS vs study loop"] == ""
    assert int8["top-1 vs ort-fp32"] == "87.5%"
    assert rows[("study-loop", "text")]["% of ceiling"] == "12.5%"


def test_share_of_ceiling_is_blank_without_a_ceiling(results: dict[str, Any]) -> None:
    ceilings = results["ceilings_gflops"]
    assert share_of_ceiling(_variant("x", "text", "bf16", gflops_achieved=5.0), ceilings) is None
    assert share_of_ceiling(_variant("x", "text", "fp32"), ceilings) is None
    assert share_of_ceiling(_variant("x", "text", "int8-wo", gflops_achieved=16.0), ceilings) == (
        pytest.approx(0.1)
    )


def test_write_reports_writes_three_files_and_the_json_round_trips(
    results: dict[str, Any], tmp_path: Path
) -> None:
    original = copy.deepcopy(results)
    folder = tmp_path / "bench"
    json_path, markdown_path, png_path = write_reports(results, folder)
    assert (json_path, markdown_path, png_path) == (
        folder / "results.json",
        folder / "results.md",
        folder / "results.png",
    )
    assert json.loads(json_path.read_text(encoding="utf-8")) == original
    assert markdown_path.read_text(encoding="utf-8") == markdown_table(original)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in folder.iterdir()) == [
        "results.json",
        "results.md",
        "results.png",
    ]  # no temporary file left behind


@pytest.fixture
def torch_threads_restored() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_prefix_reuse_work_differs_from_the_study_loop_only_by_the_head() -> None:
    from cvs_evaluator.bench.gpu import GpuBenchSettings, work_per_item
    from cvs_evaluator.bench.workload import LanguageModelSize

    size = LanguageModelSize(
        non_embedding_params=1000, layers=2, heads=3, head_dim=4, hidden=5, vocab=7
    )
    settings = GpuBenchSettings(
        models=("smol",),
        device="cpu",
        dtype="fp32",
        image_tokens=8,
        text_prefix_tokens=4,
        questions=1,
        suffix_tokens=5,
        batch=1,
        out=Path("unused.json"),
        threads=1,
    )
    work = work_per_item(size, settings)
    # With one question both paths attend to the same keys; the study loop's head runs at all
    # 17 positions, prefix reuse's at one.
    head = 2 * size.hidden * size.vocab * (17 - 1) / 1e9
    assert work["study_loop"] - work["prefix_reuse"] == pytest.approx(head)


@pytest.mark.slow
@pytest.mark.usefixtures("torch_threads_restored")
def test_gpu_script_smoke_mode_on_cpu_matches_the_study_loop(tmp_path: Path) -> None:
    from cvs_evaluator.bench.gpu import main

    out = tmp_path / "bench" / "results-gpu.json"
    # fmt: off
    argv = [
        "--models", "smol", "--device", "cpu", "--dtype", "fp32", "--image-tokens", "8",
        "--text-prefix-tokens", "4", "--questions", "3", "--suffix-tokens", "5", "--batch", "2",
        "--threads", "1", "--out", str(out),
    ]
    # fmt: on
    assert main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["device"] == "cpu" and results["dtype"] == "fp32"
    assert "language model only" in results["scope"]
    (row,) = results["models"]
    assert row["model"] == "smol" and row["prefix_tokens"] == 12 and row["items"] == 3
    assert row["compared_items"] == 2
    # fp32: the shared-prefix path must give the study loop's last-position log-probs.
    assert row["max_abs_dlogprob_prefix_reuse_vs_study_loop"] < 1e-3
    for path in ("study_loop", "prefix_reuse"):
        assert row[path]["seconds_per_item"] > 0.0 and row[path]["tflops_achieved"] > 0.0
    assert row["study_loop"]["gflop_per_item"] > row["prefix_reuse"]["gflop_per_item"]
    assert row["peak_memory_bytes"] > 0
