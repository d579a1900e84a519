"""Least-recently-used caches under a byte budget: image features and prefix key/value caches.

The scheduler keeps two: image features by (engine, image content hash), and each group's
prefix cache by (engine, prefix tokens, image content hash). An entry larger than the budget is
never stored (the scheduler refuses such a budget before any work starts, naming the size
needed); a budget of 0 turns the cache off, so every lookup misses and the work is redone.
Numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

Value = TypeVar("Value")


@dataclass
class CacheStats:
    """What a cache did during a run."""

    hits: int = 0
    """Lookups that found their entry."""
    misses: int = 0
    """Lookups that did not (the caller computed the value)."""
    evictions: int = 0
    """Entries dropped to make room."""
    peak_bytes: int = 0
    """Most bytes held at once."""


class ByteBudgetLRU(Generic[Value]):
    """Entries with a stated size; the least recently used go first when the budget is full."""

    def __init__(self, name: str, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"{name} cache budget must be ≥ 0 bytes, got {budget_bytes}")
        self.name = name
        """What the cache holds, for messages."""
        self.budget_bytes = budget_bytes
        """Most bytes held at once (0: the cache is off)."""
        self.stats = CacheStats()
        """Hits, misses, evictions and the peak held."""
        self._entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()
        self._held = 0

    @property
    def held_bytes(self) -> int:
        """Bytes held now."""
        return self._held

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> Value | None:
        """The entry for `key` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[0]

    def put(self, key: str, value: Value, nbytes: int) -> None:
        """Hold `value` (of `nbytes`), evicting the least recently used entries as needed; a
        value larger than the whole budget is not held."""
        if key in self._entries:
            self._held -= self._entries.pop(key)[1]
        if nbytes > self.budget_bytes:
            return
        while self._held + nbytes > self.budget_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self._held -= size
            self.stats.evictions += 1
        self._entries[key] = (value, nbytes)
        self._held += nbytes
        self.stats.peak_bytes = max(self.stats.peak_bytes, self._held)

    def clear(self) -> None:
        """Drop every entry (statistics are kept)."""
        self._entries.clear()
        self._held = 0


def content_hash(*arrays: NDArray[np.generic] | bytes | str) -> str:
    """sha256 over the bytes (with dtype and shape) of `arrays`: equal content, equal key."""
    digest = hashlib.sha256()
    for item in arrays:
        if isinstance(item, str):
            digest.update(item.encode())
        elif isinstance(item, bytes):
            digest.update(item)
        else:
            array = np.ascontiguousarray(item)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        digest.update(b"\0")
    return digest.hexdigest()
