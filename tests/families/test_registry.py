"""The family registry: names, lazy imports, errors that explain themselves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cvs_families import registry
from cvs_families.registry import (
    UnknownFamilyError,
    family_names,
    get_family,
    register_family,
)
from cvs_families.spec import FamilySpec

REPO = Path(__file__).resolve().parents[2]


def test_every_issue_family_is_registered() -> None:
    assert family_names() == sorted(
        ["vicuna13b", "yi34b", "qwen72b", "tiny-vicuna", "tiny-yi", "tiny-qwen", "smol"]
    )


@pytest.mark.parametrize("name", family_names())
def test_each_name_gives_its_own_spec(name: str) -> None:
    spec = get_family(name)
    assert isinstance(spec, FamilySpec)
    assert spec.name == name
    assert get_family(name) is spec


def test_kinds_and_weights_sources() -> None:
    kinds = {name: get_family(name).kind for name in family_names()}
    assert kinds == {
        "vicuna13b": "real",
        "yi34b": "real",
        "qwen72b": "real",
        "tiny-vicuna": "tiny",
        "tiny-yi": "tiny",
        "tiny-qwen": "tiny",
        "smol": "smol",
    }
    for name in family_names():
        spec = get_family(name)
        assert (spec.build is None) == (spec.kind == "real"), name
        assert (spec.hf_id is not None) == (spec.kind == "real"), name


def test_unknown_name_suggests_the_close_one() -> None:
    with pytest.raises(UnknownFamilyError) as caught:
        get_family("yi-34b")
    message = str(caught.value)
    assert "did you mean 'yi34b'?" in message
    for name in family_names():
        assert name in message


def test_unknown_name_is_a_key_error_without_a_quoted_message() -> None:
    with pytest.raises(KeyError) as caught:
        get_family("gpt-5")
    assert str(caught.value).startswith("unknown model family 'gpt-5'")
    assert "did you mean" not in str(caught.value)


def test_a_name_cannot_be_registered_twice_with_another_target() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_family("yi34b", "cvs_families.qwen:QWEN72B")


def test_a_target_must_be_module_colon_attr() -> None:
    with pytest.raises(ValueError, match="module:attr"):
        register_family("new-family", "cvs_families.qwen.QWEN72B")


def test_an_entry_pointing_at_another_spec_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._ENTRIES, "not-qwen-test-entry", "cvs_families.qwen:QWEN72B")
    with pytest.raises(TypeError, match="not the FamilySpec"):
        get_family("not-qwen-test-entry")


def _modules_loaded_by(statement: str) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_registry_imports_no_family_module_and_no_torch() -> None:
    loaded = _modules_loaded_by("import cvs_families.registry")
    for forbidden in ("torch", "transformers", "cvs_families.yi", "cvs_families.checkpoint"):
        assert forbidden not in loaded


def test_every_spec_and_its_numpy_processing_work_without_torch() -> None:
    statement = (
        "import numpy as np\n"
        "from cvs_families.registry import family_names, get_family\n"
        "for name in family_names():\n"
        "    spec = get_family(name)\n"
        "    image = np.zeros((50, 90, 3), dtype=np.uint8)\n"
        "    prepared = spec.prepare_image(image)\n"
        "    features = np.zeros((prepared.pixel_values.shape[0], spec.tokens_per_tile, 4))\n"
        "    spec.pack_image_features(features, prepared.image_size, np.zeros(4))\n"
    )
    loaded = _modules_loaded_by(statement)
    for forbidden in ("torch", "transformers", "tokenizers", "cvs_families.checkpoint"):
        assert forbidden not in loaded
