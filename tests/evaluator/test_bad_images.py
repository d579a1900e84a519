"""Bad images are skipped, not fatal: a truncated JPEG or a 20000×20000 PNG costs only its own
items, is listed with its reason in the run folder, the report and the terminal, and a run left
with no image at all stops with one line naming every image and why."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from cvs_evaluator.cli_eval import main
from cvs_evaluator.images import (
    MAX_PIXELS_ENV,
    ImageRecord,
    ImageSet,
    ImageSkipped,
    ImageSourceError,
    LoadedImage,
    SkippedImage,
    check_images,
    image_preparer,
    inspect_image,
    load_rgb,
)
from cvs_evaluator.results import ResultStore
from cvs_evaluator.skipped_images import SKIPPED_LISTED, all_skipped_error, read_skipped

BOMB_SIDE = 20000


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid PNG header saying side × side RGB, with a few bytes of pixel data: decoding it
    would need 1.2 GB, so only a check made before decoding can report its size."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
    data += _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def truncated_jpeg(path: Path) -> Path:
    """A JPEG written by PIL and cut in half: the header survives, the pixels do not."""
    pixels = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def good_png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def _record(path: Path, root: Path) -> ImageRecord:
    return ImageRecord(
        id=path.relative_to(root).as_posix(),
        path=path,
        country="DEU",
        country_name="Germany",
        category="flag",
    )


# --------------------------------------------------------------------------- the pixel limit


def test_a_bomb_is_refused_from_its_header_naming_size_limit_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    record = _record(bomb_png(tmp_path / "big.png"), tmp_path)
    for outcome in (inspect_image(record, tmp_path), load_rgb(record, tmp_path)):
        # "too_many_pixels", not "truncated": the 16 bytes of pixels were never decoded.
        assert isinstance(outcome, SkippedImage) and outcome.reason == "too_many_pixels"
        assert f"{BOMB_SIDE}×{BOMB_SIDE} = {BOMB_SIDE**2} pixels" in outcome.detail
        assert str(Image.MAX_IMAGE_PIXELS) in outcome.detail  # PIL's limit, the default
        assert MAX_PIXELS_ENV in outcome.detail


def test_the_environment_variable_lowers_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record(good_png(tmp_path / "small.png", (64, 48)), tmp_path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "3071")
    for outcome in (inspect_image(record, tmp_path), load_rgb(record, tmp_path)):
        assert isinstance(outcome, SkippedImage) and outcome.reason == "too_many_pixels"
        assert "3072 pixels" in outcome.detail and "3071" in outcome.detail
    monkeypatch.setenv(MAX_PIXELS_ENV, "3072")  # at the limit: used
    assert inspect_image(record, tmp_path) == (48, 64)
    assert isinstance(load_rgb(record, tmp_path), LoadedImage)


def test_the_environment_variable_raises_the_limit_above_pils(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIL alone refuses 4e8 pixels when the file is opened (twice its 89 million limit); the
    variable lets a user accept it. Only the header is read here."""
    record = _record(bomb_png(tmp_path / "big.png"), tmp_path)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(BOMB_SIDE**2))
    assert inspect_image(record, tmp_path) == (BOMB_SIDE, BOMB_SIDE)
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's own setting is left as it was


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5"])
def test_a_malformed_limit_is_one_line_naming_the_variable(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record(good_png(tmp_path / "small.png"), tmp_path)
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    with pytest.raises(ImageSourceError) as raised:
        inspect_image(record, tmp_path)
    assert MAX_PIXELS_ENV in str(raised.value) and repr(value) in str(raised.value)
    assert "\n" not in str(raised.value)


# --------------------------------------------------------------------------- the checks


def test_headers_sort_the_images_before_any_decoding(tmp_path: Path) -> None:
    paths = [
        good_png(tmp_path / "a.png"),
        bomb_png(tmp_path / "b.png"),
        truncated_jpeg(tmp_path / "c.jpg"),  # header intact: found only when decoded
        tmp_path / "d.png",
    ]
    paths[3].write_bytes(b"")
    checked = check_images([_record(p, tmp_path) for p in paths], tmp_path)
    assert checked.sizes == {"a.png": (48, 64), "c.jpg": (128, 128)}
    assert [(s.record.id, s.reason) for s in checked.skipped] == [
        ("b.png", "too_many_pixels"),
        ("d.png", "zero_size"),
    ]


def test_the_preparer_raises_a_skip_with_a_readable_message(tmp_path: Path) -> None:
    from cvs_families.registry import get_family

    spec = get_family("tiny-yi")
    record = _record(truncated_jpeg(tmp_path / "c.jpg"), tmp_path)
    good = _record(good_png(tmp_path / "a.png"), tmp_path)
    prepare = image_preparer(ImageSet(root=tmp_path, records=[record, good], skipped=[]), spec)
    with pytest.raises(ImageSkipped) as raised:
        prepare("c.jpg")
    assert raised.value.skipped.reason == "truncated" and raised.value.skipped.record == record
    message = str(raised.value)
    assert "c.jpg" in message and "truncated" in message
    assert "SkippedImage(" not in message and "ImageRecord(" not in message and "\n" not in message
    assert prepare("a.png").image_size == (48, 64)


def test_the_all_skipped_message_is_one_line_with_every_reason(tmp_path: Path) -> None:
    skipped = [
        SkippedImage(_record(tmp_path / f"x{i}.png", tmp_path), "missing", f"x{i}.png gone")
        for i in range(SKIPPED_LISTED + 3)
    ]
    skipped.insert(1, skipped[0])  # the comparison engine met the same image again
    message = str(all_skipped_error(skipped))
    assert "\n" not in message
    assert f"({SKIPPED_LISTED + 3})" in message  # counted once each
    assert "x0.png missing" in message and f"x{SKIPPED_LISTED - 1}.png missing" in message
    assert f"x{SKIPPED_LISTED}.png" not in message and "and 3 more" in message


# --------------------------------------------------------------------------- whole runs


def _run(images: Path, out: Path, *extra: str) -> Result:
    args = [
        "--model", "tiny-yi", "--engine", "torch", "--condition", "image",
        "--include-uninformative-images", "--images", str(images), "--country", "DEU",
        "--country", "JPN", "--question", "Q57", "--out", str(out), "--compare-to", "none",
        "--no-progress", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(main, args)


def _everything_written(out: Path, result: Result) -> str:
    texts = [result.output]
    texts += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    return "\n".join(texts)


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    good_png(root / "DEU" / "flag" / "good.png")
    good_png(root / "JPN" / "flag" / "good.png", (40, 40))
    truncated_jpeg(root / "DEU" / "flag" / "cut.jpg")
    bomb_png(root / "JPN" / "flag" / "big.png")
    return root


@pytest.mark.slow
def test_bad_images_are_skipped_recorded_and_reported_and_a_rerun_keeps_them(
    mixed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    out = tmp_path / "run"
    result = _run(mixed_folder, out)
    assert result.exit_code == 0, result.output
    rows = list(ResultStore(out / "store.jsonl").rows())
    assert sorted(r["image"] for r in rows) == ["DEU/flag/good.png", "JPN/flag/good.png"]
    assert {r["status"] for r in rows} == {"scored"}

    table = read_skipped(out)
    assert table is not None
    reasons = dict(zip(table["image_id"], table["reason"], strict=True))
    assert reasons == {"JPN/flag/big.png": "too_many_pixels", "DEU/flag/cut.jpg": "truncated"}
    assert dict(zip(table["image_id"], table["country"], strict=True)) == {
        "JPN/flag/big.png": "JPN",
        "DEU/flag/cut.jpg": "DEU",
    }
    html = (out / "alignment.html").read_text()
    assert "Skipped images" in html
    for image_id, reason in reasons.items():
        assert image_id in html and reason in html
    assert "400000000 pixels" in html and MAX_PIXELS_ENV in html
    summary = [line for line in result.output.splitlines() if line.startswith("skipped ")]
    assert len(summary) == 1 and "skipped 2 of 4 image(s)" in summary[0]
    assert "SkippedImage(" not in _everything_written(out, result)

    check = json.loads((out / "timings.json").read_text())["run"]["output_check"]
    assert check["passed"] is True and check["batch_items"] >= 1

    # A rerun scores nothing again and still reports both skipped images.
    stored = (out / "store.jsonl").read_bytes()
    again = _run(mixed_folder, out)
    assert again.exit_code == 0, again.output
    assert (out / "store.jsonl").read_bytes() == stored
    assert json.loads((out / "timings.json").read_text())["run"]["items"] == 0
    assert "skipped 2 of 4 image(s)" in again.output
    table = read_skipped(out)
    assert table is not None and set(table["image_id"]) == set(reasons)
    assert "JPN/flag/big.png" in (out / "alignment.html").read_text()


@pytest.mark.slow
def test_a_run_whose_every_image_is_bad_fails_with_every_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    root = tmp_path / "images"
    truncated_jpeg(root / "DEU" / "flag" / "cut.jpg")
    bomb_png(root / "JPN" / "flag" / "big.png")
    (root / "JPN" / "flag" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    result = _run(root, out)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for image_id, reason in [
        ("DEU/flag/cut.jpg", "truncated"),
        ("JPN/flag/big.png", "too_many_pixels"),
        ("JPN/flag/empty.png", "zero_size"),
    ]:
        assert f"{image_id} {reason}" in errors[0]
    assert "Traceback" not in result.output and "SkippedImage(" not in result.output
    assert not list(ResultStore(out / "store.jsonl").rows())


def test_header_bad_images_only_stop_the_run_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every image refused from its header: the run stops before loading anything or creating
    the run folder."""
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    root = tmp_path / "images"
    bomb_png(root / "JPN" / "flag" / "big.png")
    (root / "DEU" / "flag").mkdir(parents=True)
    (root / "DEU" / "flag" / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    result = _run(root, out)
    assert result.exit_code == 1
    assert result.output.count("Error:") == 1 and result.output.startswith("Error:")
    assert "JPN/flag/big.png too_many_pixels" in result.output
    assert "DEU/flag/empty.png zero_size" in result.output
    assert not out.exists()


def test_a_malformed_limit_stops_the_run_before_any_work(
    mixed_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    out = tmp_path / "run"
    result = _run(mixed_folder, out)
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and result.output.count("\n") == 1
    assert MAX_PIXELS_ENV in result.output
    assert not out.exists()
