"""``AsyncLru``: what the rewards' caches of other services' answers rely on."""

from __future__ import annotations

import asyncio

import pytest

from reward_service.rewards._lru import AsyncLru


async def test_none_is_cached_failures_are_not_and_misses_share_one_fetch() -> None:
    cache: AsyncLru[str, int | None] = AsyncLru(2)
    calls: list[str] = []

    async def fetch(key: str, value: int | None, fail: bool = False) -> int | None:
        calls.append(key)
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("down")
        return value

    assert await cache.get("absent", lambda: fetch("absent", None)) is None
    assert await cache.get("absent", lambda: fetch("absent", 1)) is None          # cached, not fetched again
    with pytest.raises(RuntimeError):
        await cache.get("flaky", lambda: fetch("flaky", 0, fail=True))
    assert await cache.get("flaky", lambda: fetch("flaky", 7)) == 7                # the failure was not stored
    got = await asyncio.gather(*(cache.get("x", lambda: fetch("x", 3)) for _ in range(5)))
    assert got == [3] * 5 and calls.count("x") == 1
    assert len(cache) == 2 and "absent" not in cache._data                        # LRU of size 2
    assert calls == ["absent", "flaky", "flaky", "x"]
