"""Image sources and RGB loading: every mode converts, every bad file is skipped with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvs_evaluator.images import (
    ImageRecord,
    ImageSet,
    ImageSourceError,
    LoadedImage,
    SkippedImage,
    dollar_street_images,
    flag_images,
    folder_images,
    load_images,
    load_rgb,
    resolve_country,
    skip_summary,
)


def _record(path: Path, category: str = "objects") -> ImageRecord:
    return ImageRecord(
        id=path.name, path=path, country="FRA", country_name="France", category=category
    )


def _loaded(path: Path, root: Path | None = None, **kwargs: int) -> LoadedImage:
    outcome = load_rgb(_record(path), root or path.parent, **kwargs)
    assert isinstance(outcome, LoadedImage), outcome
    assert outcome.pixels.dtype == np.uint8
    assert outcome.pixels.ndim == 3 and outcome.pixels.shape[2] == 3
    return outcome


def _skipped(path: Path, root: Path | None = None, **kwargs: int | None) -> SkippedImage:
    outcome = load_rgb(_record(path), root or path.parent, **kwargs)
    assert isinstance(outcome, SkippedImage), outcome
    assert str(path.name) in outcome.detail or "outside" in outcome.detail
    return outcome


# --------------------------------------------------------------------------- conversions


def test_palette_png_converts_to_its_palette_colours(tmp_path: Path) -> None:
    image = Image.new("P", (3, 2))
    image.putpalette([255, 0, 0, 0, 128, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2, 2, 1, 0])
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    pixels = _loaded(tmp_path / "p.png").pixels
    assert pixels[0].tolist() == [[255, 0, 0], [0, 128, 0], [10, 20, 30]]
    assert pixels[1].tolist() == [[10, 20, 30], [0, 128, 0], [255, 0, 0]]


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([0, 0, 255, 0, 0, 0] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    image.save(tmp_path / "pt.png", transparency=1)
    pixels = _loaded(tmp_path / "pt.png").pixels
    assert pixels[0].tolist() == [[0, 0, 255], [255, 255, 255]]


def test_greyscale_repeats_the_grey_value(tmp_path: Path) -> None:
    grey = np.array([[0, 77, 200], [255, 13, 128]], dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    pixels = _loaded(tmp_path / "l.png").pixels
    for channel in range(3):
        np.testing.assert_array_equal(pixels[:, :, channel], grey)


def test_greyscale_with_alpha_is_composited_on_white(tmp_path: Path) -> None:
    data = np.array([[[100, 255], [100, 0], [100, 128]]], dtype=np.uint8)  # (1, 3, LA)
    Image.fromarray(data, mode="LA").save(tmp_path / "la.png")
    pixels = _loaded(tmp_path / "la.png").pixels.astype(int)
    expected_half = 100 * 128 / 255 + 255 * (1 - 128 / 255)
    assert pixels[0, 0].tolist() == [100, 100, 100]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(pixels[0, 2] - expected_half) <= 1)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    data = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 200, 64]]], dtype=np.uint8)
    Image.fromarray(data, mode="RGBA").save(tmp_path / "rgba.png")
    pixels = _loaded(tmp_path / "rgba.png").pixels.astype(int)
    alpha = 64 / 255
    expected = [255 * (1 - alpha), 255 * (1 - alpha), 200 * alpha + 255 * (1 - alpha)]
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(pixels[0, 2] - np.array(expected)) <= 1)


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    data = np.array([[[255, 0, 0, 0], [0, 0, 0, 255], [100, 0, 0, 100]]], dtype=np.uint8)
    Image.fromarray(data, mode="CMYK").save(tmp_path / "cmyk.tif")
    pixels = _loaded(tmp_path / "cmyk.tif").pixels.astype(int)
    assert pixels[0, 0].tolist() == [0, 255, 255]  # cyan
    assert pixels[0, 1].tolist() == [0, 0, 0]  # black
    # (255 - c) * (255 - k) / 255 per channel
    assert np.all(np.abs(pixels[0, 2] - np.array([155 * 155 / 255, 155, 155])) <= 1)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    data = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    pixels = _loaded(tmp_path / "g16.png").pixels.astype(int)
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_rgb_jpeg_loads_unchanged_in_shape(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "x.jpg", quality=95)
    pixels = _loaded(tmp_path / "x.jpg").pixels
    assert pixels.shape == (30, 40, 3)
    assert np.all(np.abs(pixels.astype(int) - [10, 200, 30]) <= 3)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert _loaded(tmp_path / "rotated.jpg").pixels.shape == (40, 20, 3)


# --------------------------------------------------------------------------- bad files


def _png_bytes(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    return (tmp_path / "ok.png").read_bytes()


def test_undecodable_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "noise.png").write_bytes(b"this is not an image at all" * 10)
    assert _skipped(tmp_path / "noise.png").reason == "undecodable"


def test_truncated_png_is_skipped(tmp_path: Path) -> None:
    data = _png_bytes(tmp_path)
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert _skipped(tmp_path / "cut.png").reason == "truncated"


def test_truncated_jpeg_is_skipped(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) - 100])
    assert _skipped(tmp_path / "cut.jpg").reason == "truncated"


def test_zero_size_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    assert _skipped(tmp_path / "empty.png").reason == "zero_size"


def test_image_over_the_pixel_limit_is_skipped(tmp_path: Path) -> None:
    Image.new("RGB", (100, 60)).save(tmp_path / "big.png")
    skipped = _skipped(tmp_path / "big.png", max_pixels=5999)
    assert skipped.reason == "too_many_pixels"
    assert "6000" in skipped.detail
    _loaded(tmp_path / "big.png", max_pixels=6000)  # at the limit: used


def test_pil_decompression_bomb_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (100, 60)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL raises above twice this
    assert _skipped(tmp_path / "bomb.png", max_pixels=10**9).reason == "too_many_pixels"


def test_path_outside_the_root_is_skipped_without_reading(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    for path in (tmp_path / "outside.png", root / "link.png", root / ".." / "outside.png"):
        assert _skipped(path, root=root).reason == "outside_root"


def test_missing_file_is_skipped(tmp_path: Path) -> None:
    assert _skipped(tmp_path / "gone.png").reason == "missing"


def test_a_bad_image_never_stops_a_run(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(b"garbage")
    Image.new("L", (8, 8), 9).save(tmp_path / "d.png")
    records = [_record(tmp_path / name) for name in ("a.png", "b.png", "c.png", "d.png")]
    loaded, skipped = load_images(ImageSet(root=tmp_path, records=records, skipped=[]))
    assert [image.record.id for image in loaded] == ["a.png", "d.png"]
    assert [(item.record.id, item.reason) for item in skipped] == [
        ("b.png", "zero_size"),
        ("c.png", "undecodable"),
    ]
    assert skip_summary(skipped) == {"undecodable": 1, "zero_size": 1}


# --------------------------------------------------------------------------- sources


def test_folder_tree_gives_country_and_category(tmp_path: Path) -> None:
    for country, category, name in [
        ("FRA", "cooking_and_food", "a.jpg"),
        ("br", "tradition", "b.png"),
        ("South Korea", "brands", "c.PNG"),
        ("Atlantis", "objects", "d.png"),
    ]:
        (tmp_path / country / category).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / country / category / name)
    (tmp_path / "FRA" / "stray.png").write_bytes(b"x")  # wrong depth: not in the layout
    (tmp_path / "FRA" / "tradition").mkdir()
    (tmp_path / "FRA" / "tradition" / "notes.txt").write_text("not an image")
    found = folder_images(tmp_path)
    got = {(r.id, r.country, r.country_name, r.category) for r in found.records}
    assert got == {
        ("FRA/cooking_and_food/a.jpg", "FRA", "France", "cooking and food"),
        ("br/tradition/b.png", "BRA", "Brazil", "tradition"),
        ("South Korea/brands/c.PNG", "KOR", "South Korea", "brands"),
        ("Atlantis/objects/d.png", "Atlantis", "Atlantis", "objects"),
    }
    assert found.root == tmp_path


def test_folder_source_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageSourceError, match="does not exist"):
        folder_images(tmp_path / "nope")


def test_resolve_country_by_code_and_name() -> None:
    vietnam = resolve_country("VNM")
    assert vietnam is not None and vietnam[0] == "VNM"
    assert resolve_country("VN") == vietnam
    assert resolve_country("nigeria") == ("NGA", "Nigeria")
    assert resolve_country("Narnia") is None


def _write_csv(path: Path, rows: list[str]) -> None:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def test_dollar_street_csv_carries_country_and_income(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "h1.jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "h2.jpg")
    _write_csv(
        tmp_path / "ds.csv",
        ["Image,Country,Income", "img/h1.jpg,NGA,27.5", "img/h2.jpg,Mexico,", "../x.jpg,BRA,3"],
    )
    found = dollar_street_images(tmp_path / "ds.csv")
    assert [(r.id, r.country, r.category, r.income) for r in found.records] == [
        ("img/h1.jpg", "NGA", "family", 27.5),
        ("img/h2.jpg", "MEX", "family", None),
    ]
    assert [(s.record.id, s.reason) for s in found.skipped] == [("../x.jpg", "outside_root")]
    loaded, skipped = load_images(found)
    assert len(loaded) == 2 and [s.reason for s in skipped] == ["outside_root"]


def test_dollar_street_csv_without_income_column_is_an_error(tmp_path: Path) -> None:
    _write_csv(tmp_path / "ds.csv", ["path,country", "a.jpg,NGA"])
    with pytest.raises(ImageSourceError, match="no income column"):
        dollar_street_images(tmp_path / "ds.csv")


def test_flags_folder_without_names_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageSourceError, match=r"countries\.json"):
        flag_images(tmp_path)


def test_small_flags_folder(tmp_path: Path) -> None:
    (tmp_path / "countries.json").write_text(json.dumps({"FR": "France", "AQ": "Antarctica"}))
    Image.new("P", (6, 4)).save(tmp_path / "fr.png")
    Image.new("RGBA", (6, 4)).save(tmp_path / "aq.png")
    found = flag_images(tmp_path)
    assert [(r.id, r.country, r.country_name, r.category) for r in found.records] == [
        ("flags/aq.png", "AQ", "Antarctica", "flag"),  # not in the country table: ISO2 kept
        ("flags/fr.png", "FRA", "France", "flag"),
    ]


def test_every_real_flag_loads_as_rgb() -> None:
    """The default source: 256 flags, most palette or RGBA PNGs; none may be skipped."""
    found = flag_images()  # reads $CVS_DATA: fails when the data is missing
    modes: dict[str, int] = {}
    for record in found.records:
        with Image.open(record.path) as image:
            modes[image.mode] = modes.get(image.mode, 0) + 1
    assert len(found.records) == 256
    assert modes.get("P") == 176 and modes.get("RGBA") == 46
    loaded, skipped = load_images(found)
    assert skipped == []
    assert len(loaded) == 256
    assert all(image.pixels.shape[1] == 250 and image.pixels.shape[2] == 3 for image in loaded)
    by_country = {image.record.country: image for image in loaded}
    assert {"USA", "BRA", "NGA", "VNM", "KOR", "FRA"} <= set(by_country)
