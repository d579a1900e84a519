"""The part interface: run an engine part by name on named numpy arrays.

An engine is a few parts (`vision`, `embedding`, `decoder` for LLaVA-NeXT) with named inputs and
outputs; every backend (onnxruntime on CPU or CUDA, TensorRT, a fake in tests) offers them through
this one Protocol, so the chain that turns requests into option scores is written once. The names
of the decoder's cache tensors are fixed here, where both the exporter and the runtime read them.
Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

PAST_PREFIX = "past"
"""Decoder cache inputs are `past.<layer>.key` / `past.<layer>.value`."""
PRESENT_PREFIX = "present"
"""Decoder cache outputs are `present.<layer>.key` / `present.<layer>.value`."""
SHARED_PREFIX = "prefix"
"""Suffix-part inputs holding a group's shared prefix cache (batch 1) are `prefix.<layer>.key` /
`prefix.<layer>.value`."""


class PartError(KeyError):
    """A part or tensor name the engine does not have, or inputs that do not match a part."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as a repr
        return str(self.args[0]) if self.args else ""


@runtime_checkable
class PartRunner(Protocol):
    """Runs the parts of one engine."""

    @property
    def part_names(self) -> tuple[str, ...]:
        """The parts this engine holds."""
        ...

    def input_names(self, part: str) -> tuple[str, ...]:
        """Input names of `part`, in graph order."""
        ...

    def output_names(self, part: str) -> tuple[str, ...]:
        """Output names of `part`, in graph order."""
        ...

    def run(
        self,
        part: str,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Sequence[str] | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run `part` on exactly its named inputs; return the named outputs (all by default)."""
        ...


def cache_names(layers: int, prefix: str) -> tuple[str, ...]:
    """`<prefix>.<layer>.key`, `<prefix>.<layer>.value` for every layer, key before value."""
    return tuple(f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value"))


def _present_renamed(outputs: Mapping[str, NDArray[Any]], to: str) -> dict[str, NDArray[Any]]:
    prefix = PRESENT_PREFIX + "."
    return {
        to + "." + name[len(prefix) :]: value
        for name, value in outputs.items()
        if name.startswith(prefix)
    }


def past_from_present(outputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """The decoder's returned cache renamed as the next call's cache inputs."""
    return _present_renamed(outputs, PAST_PREFIX)


def shared_prefix_from_present(outputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
    """The decoder's returned cache (batch 1) renamed as the suffix part's prefix inputs."""
    return _present_renamed(outputs, SHARED_PREFIX)


def select_outputs(part: str, available: Sequence[str], outputs: Sequence[str] | None) -> list[str]:
    """The outputs to return: `outputs` (checked to exist) or all of `available`."""
    names = list(outputs) if outputs is not None else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise PartError(f"part {part} has no outputs {unknown}; outputs: {list(available)}")
    return names


def check_feeds(part: str, expected: Sequence[str], inputs: Mapping[str, NDArray[Any]]) -> None:
    """Raise PartError naming missing or unexpected inputs of `part`."""
    missing = [n for n in expected if n not in inputs]
    unexpected = sorted(set(inputs) - set(expected))
    if missing or unexpected:
        raise PartError(
            f"part {part}: missing inputs {missing}, unexpected inputs {unexpected}"
            if missing and unexpected
            else f"part {part}: missing inputs {missing}"
            if missing
            else f"part {part}: unexpected inputs {unexpected}"
        )


def check_part(part: str, available: Sequence[str]) -> None:
    """Raise PartError unless `part` is one of `available`."""
    if part not in available:
        raise PartError(f"no part {part!r} in this engine; parts: {', '.join(available)}")


def as_feed(array: NDArray[Any], dtype: type[np.generic]) -> NDArray[Any]:
    """`array` as a C-contiguous array of `dtype` (a copy only when needed)."""
    return np.ascontiguousarray(array, dtype=dtype)
