"""``GuardedPrintf`` against SQLite's own printf: random formats give the same result on a
guarded connection as on a plain one, and ``printf_min_bytes`` never exceeds the real length."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tool_servers.sql.db import connect_readonly
from tool_servers.sql.printf import printf_min_bytes

FLAGS = ["", "", "-", "+", " ", "#", "!", "0", ",", "-0"]
WIDTHS = ["", "", "5", "12", "*", "l"]
PRECISIONS = ["", "", ".", ".3", ".0", ".*", ".7l"]
LENGTHS = ["", "", "", "l", "ll"]
CONVERSIONS = [*"csdfgqQwnxyTriupeEGXoz%", "c", "c", "", "é"]
TEXT = ["", "", "ab", "é", "%", "5", "*", "."]
VALUES: list[Any] = [None, 0, 1, -3, 7, 2.9, -4.2, "4", " 6x", "1e2", "é", b"\x05", "", "abc", 2**32 + 3,
                     -(2**31), 2**40]


def test_random_formats_match_sqlite_and_the_bound_holds(repo: Any) -> None:
    plain = sqlite3.connect(":memory:")
    guarded = connect_readonly(Path(repo.spider_db_dir) / "concert_singer" / "concert_singer.sqlite")

    def int64(value: Any) -> int:
        return value if isinstance(value, int) else int(plain.execute("SELECT printf('%d', ?)", (value,)).fetchone()[0])

    rng = random.Random(0)
    checked_bounds = 0
    try:
        for _ in range(3000):
            fmt = "".join(
                rng.choice(TEXT) + "%" + "".join(rng.choice(part) for part in (FLAGS, WIDTHS, PRECISIONS, LENGTHS))
                + rng.choice(CONVERSIONS)
                for _ in range(rng.randint(1, 3))
            )
            args = [rng.choice(VALUES) for _ in range(rng.randint(0, 4))]
            sql = f"SELECT printf({', '.join('?' * (1 + len(args)))})"
            want = plain.execute(sql.replace("printf(", "CAST(printf(") + " AS BLOB)", [fmt, *args]).fetchone()[0]
            bound = printf_min_bytes(fmt.encode(), args, int64)
            assert bound <= (len(want) if want is not None else 0), (fmt, args)
            checked_bounds += bound > 0
            try:
                want.decode() if want is not None else None
            except UnicodeDecodeError:  # e.g. '%.1s' of 'é' cuts a character: Python cannot return it
                with pytest.raises(sqlite3.OperationalError, match="user-defined function raised exception"):
                    guarded.execute(sql, [fmt, *args]).fetchone()
                assert "not valid UTF-8" in (guarded.guard.failed_call or "")
                continue
            got = guarded.execute(sql, [fmt, *args]).fetchone()[0]
            assert (got.encode() if got is not None else None) == want, (fmt, args)
    finally:
        guarded.close()
        plain.close()
    assert checked_bounds > 1000  # the bound was not trivially 0


def test_the_bound_reads_widths_precisions_and_stars() -> None:
    def bound(fmt: str, *args: Any) -> int:
        return printf_min_bytes(fmt.encode(), args, int)

    assert bound("%.5c") == 5 and bound("%3c") == 3 and bound("%7.5c") == 7
    assert bound("%.*c", 10**9, "x") == 10**9
    assert bound("%*.*c|%.*c", -4, 6, "x", 2, "y") == 8    # a negative width is left-justified
    assert bound("%.4294967299c") == 3                      # the digits wrap like C's unsigned
    assert bound("%.*c", 2**32 + 3, "x") == 3               # C's (int) of the argument
    assert bound("%d %.*c", 1, 9, "x") == 9                 # %d takes the first argument
    assert bound("%5%%.3s", "abcdef") == 5                  # %% takes no argument; %.3s cuts
    assert bound("%y%.9c", "x") == 0                        # printf stops at an unknown conversion
    assert bound("%5l.3c", "x") == 0                        # 'l' then '.': unknown, as in SQLite
