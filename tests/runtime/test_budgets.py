"""Budgets: sizes as users write them, defaults from memory, batch rows, and the LRU caches."""

from __future__ import annotations

import numpy as np
import pytest

from cvs_families.registry import get_family
from cvs_runtime.budgets import (
    BudgetError,
    Budgets,
    default_budgets,
    format_size,
    parse_size,
    prefix_cache_bytes,
    rows_for_budget,
    suffix_row_bytes,
)
from cvs_runtime.caches import ByteBudgetLRU, content_hash


@pytest.mark.parametrize(
    "text,expected",
    [
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("1500MB", 1_500_000_000),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("64kib", 64 * 1024),
        ("4096", 4096),
        ("0", 0),
    ],
)
def test_sizes_are_read_as_users_write_them(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "12XB", "-5MiB", "", "MiB", "1e9"])
def test_a_budget_that_is_not_a_size_is_one_clear_error(text: str) -> None:
    with pytest.raises(BudgetError, match="is not a size: write a number"):
        parse_size(text)


def test_sizes_print_in_binary_units() -> None:
    assert format_size(512) == "512 B"
    assert format_size(140.25 * 2**20) == "140.2 MiB"
    assert format_size(3 * 2**30) == "3.0 GiB"


def test_defaults_follow_the_machine_memory_and_are_capped() -> None:
    small = default_budgets(memory_bytes=8 * 2**30)
    assert small.image_cache_bytes == 8 * 2**30 // 20
    assert small.prefix_cache_bytes == 8 * 2**30 // 10
    assert small.activation_bytes == 8 * 2**30 // 5
    huge = default_budgets(memory_bytes=2**40)
    assert huge.image_cache_bytes == 4 * 2**30 and huge.prefix_cache_bytes == 16 * 2**30
    assert huge.activation_bytes == 16 * 2**30


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"activation_bytes": 0}, "more than 0 bytes"),
        ({"image_cache_bytes": -1}, "image_cache_bytes must be ≥ 0"),
        ({"max_batch": 0}, "batch size cap must be ≥ 1"),
    ],
)
def test_impossible_budgets_are_refused(kwargs: dict[str, int], message: str) -> None:
    values = {"image_cache_bytes": 1, "prefix_cache_bytes": 1, "activation_bytes": 1}
    with pytest.raises(BudgetError, match=message):
        Budgets(**{**values, **kwargs})


def test_rows_follow_the_activation_budget_and_the_cap() -> None:
    spec = get_family("smol")
    row = suffix_row_bytes(spec, prefix=2928, width=128)
    assert rows_for_budget(Budgets(0, 0, 10 * row, max_batch=64), row) == 10
    assert rows_for_budget(Budgets(0, 0, 10 * row, max_batch=4), row) == 4
    assert rows_for_budget(Budgets(0, 0, row - 1, max_batch=4), row) == 0
    # A longer prefix needs more per row (attention over it), so fewer rows fit.
    assert suffix_row_bytes(spec, prefix=2928, width=128) > suffix_row_bytes(spec, 90, 128)


def test_prefix_cache_bytes_by_hand() -> None:
    spec = get_family("smol")  # 30 layers, 3 key/value heads of width 64
    assert prefix_cache_bytes(spec, 100) == 2 * 30 * 3 * 64 * 100 * 4


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU("test", budget_bytes=10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # a is now the most recently used
    cache.put("c", "C", 4)  # 12 > 10: b goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.held_bytes == 8 and cache.stats.evictions == 1
    assert cache.stats.hits == 1 and cache.get("b") is None and cache.stats.misses == 1
    assert cache.stats.peak_bytes == 8


def test_an_entry_larger_than_the_budget_is_not_held_and_a_zero_budget_holds_nothing() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU("test", budget_bytes=10)
    cache.put("big", "X", 11)
    assert "big" not in cache and cache.held_bytes == 0
    off: ByteBudgetLRU[str] = ByteBudgetLRU("off", budget_bytes=0)
    off.put("a", "A", 1)
    assert len(off) == 0 and off.get("a") is None


def test_replacing_an_entry_counts_its_bytes_once() -> None:
    cache: ByteBudgetLRU[str] = ByteBudgetLRU("test", budget_bytes=10)
    cache.put("a", "A", 6)
    cache.put("a", "A2", 6)
    assert cache.held_bytes == 6 and cache.get("a") == "A2" and cache.stats.evictions == 0


def test_content_hashes_see_values_dtype_and_shape() -> None:
    a = np.arange(6, dtype=np.float32)
    assert content_hash(a) == content_hash(a.copy())
    assert content_hash(a) != content_hash(a.astype(np.float64))
    assert content_hash(a) != content_hash(a.reshape(2, 3))
    changed = a.copy()
    changed[3] += 1e-6
    assert content_hash(a) != content_hash(changed)
    assert content_hash("engine-1", a) != content_hash("engine-2", a)
