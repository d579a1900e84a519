"""Requests as a file (`cvs-eval prompts` → `cvs-export build --prompts`): a round trip keeps
every field; a changed, foreign or wrong-version file is refused naming what differs."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cvs_families.requests import ScoringRequest
from cvs_families.spec import PreparedImage
from cvs_runtime.request_file import (
    CALIBRATION_SET,
    PRECISION_SETS,
    VERDICT_SET,
    RequestFileError,
    read_request_file,
    write_request_file,
)


def _request(n: int, length: int) -> ScoringRequest:
    return ScoringRequest(
        input_ids=np.arange(length, dtype=np.int64) + n,
        image=None,
        option_token_ids=np.array([40, 41, 42][: 2 + n % 2], dtype=np.int64),
        group_key=f"text:BRA:{n // 2}",
        prefix_len=min(3, length),
        item_id=f"v|tiny-yi|text|BRA|-|Q{n}",
    )


SETS = {
    VERDICT_SET: [_request(n, 5 + n) for n in range(4)],
    CALIBRATION_SET: [_request(n, 9) for n in range(10, 12)],
}


def _write(path: Path, **changes: object) -> Path:
    arguments: dict[str, object] = {
        "family": "tiny-yi",
        "checkpoint_fingerprint": "ab" * 32,
        "sets": SETS,
        "source": {"writer": "test"},
    }
    arguments.update(changes)
    return write_request_file(path, **arguments)  # type: ignore[arg-type]


def test_a_round_trip_keeps_every_request_field(tmp_path: Path) -> None:
    read = read_request_file(_write(tmp_path / "p.npz"))
    assert read.family == "tiny-yi" and read.checkpoint_fingerprint == "ab" * 32
    assert read.source == {"writer": "test"}
    assert list(read.sets) == [VERDICT_SET, CALIBRATION_SET]
    for name, written in SETS.items():
        assert len(read.sets[name]) == len(written)
        for got, want in zip(read.sets[name], written, strict=True):
            np.testing.assert_array_equal(got.input_ids, want.input_ids)
            np.testing.assert_array_equal(got.option_token_ids, want.option_token_ids)
            assert got.input_ids.dtype == np.int64 and got.image is None
            assert (got.group_key, got.prefix_len, got.item_id) == (
                want.group_key,
                want.prefix_len,
                want.item_id,
            )
    read.checked(family="tiny-yi", checkpoint_fingerprint="ab" * 32, sets=PRECISION_SETS)


def test_another_family_or_checkpoint_is_refused_naming_the_field(tmp_path: Path) -> None:
    read = read_request_file(_write(tmp_path / "p.npz"))
    with pytest.raises(RequestFileError, match="family is 'tiny-yi'"):
        read.checked(family="smol", checkpoint_fingerprint="ab" * 32, sets=PRECISION_SETS)
    with pytest.raises(RequestFileError, match="checkpoint_fingerprint"):
        read.checked(family="tiny-yi", checkpoint_fingerprint="cd" * 32, sets=PRECISION_SETS)


def test_a_missing_or_empty_set_is_refused(tmp_path: Path) -> None:
    read = read_request_file(_write(tmp_path / "p.npz", sets={VERDICT_SET: SETS[VERDICT_SET]}))
    with pytest.raises(RequestFileError, match="no 'calibration' requests"):
        read.checked(family="tiny-yi", checkpoint_fingerprint="ab" * 32, sets=PRECISION_SETS)


def test_changed_content_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.npz")
    with np.load(path) as loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    arrays["verdict.input_ids"] = arrays["verdict.input_ids"] + 1
    np.savez(path, **arrays)
    with pytest.raises(RequestFileError, match="content_sha256"):
        read_request_file(path)


def test_another_schema_version_is_refused_with_both_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.npz")
    with np.load(path) as loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    header = json.loads(arrays["header"].tobytes())
    header["schema_version"] = 99
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(RequestFileError, match="schema_version 99, this version reads 1"):
        read_request_file(path)


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.zeros(3))
    with pytest.raises(RequestFileError, match="no header"):
        read_request_file(other)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(RequestFileError, match="not a request file"):
        read_request_file(text)
    assert not zipfile.is_zipfile(text)


def test_an_image_request_is_refused_when_writing(tmp_path: Path) -> None:
    image = PreparedImage(
        pixel_values=np.zeros((1, 3, 2, 2), np.float32), image_size=(2, 2), grid=(0, 0)
    )
    with_image = ScoringRequest(
        input_ids=np.array([1, 2], np.int64),
        image=image,
        option_token_ids=np.array([3, 4], np.int64),
        group_key="image:x",
        item_id="img-item",
    )
    with pytest.raises(ValueError, match="'img-item' has an image"):
        _write(tmp_path / "p.npz", sets={VERDICT_SET: [with_image]})
    assert not (tmp_path / "p.npz").exists()
