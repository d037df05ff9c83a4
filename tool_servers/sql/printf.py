"""SQLite's ``printf()``/``format()`` for untrusted SQL.

``%c`` with a precision repeats its character in a loop that neither SQLITE_LIMIT_LENGTH nor
the progress handler stops: ``printf('%.*c', 1000000000, 'x')`` ran for seconds past the time
limit before it returned NULL. ``GuardedPrintf`` replaces both names on a guarded connection:
it reads the format as SQLite does, refuses a result that would be over the length limit, and
runs everything else through SQLite's own printf.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

# printf's conversion letters (SQLite printf.c ``fmtinfo``); T and S are internal: printf() stops there
_PRINTF_TYPES = frozenset(b"dsgzqQwcouxXfeEGinp%r")
_PRINTF_FLAGS = frozenset(b"-+ #!0,")
_DIGITS = frozenset(b"0123456789")
_DOT, _STAR, _L, _PERCENT = b".*l%"


def _c_int(value: int) -> int:
    """C's ``(int)`` of a 64-bit value, as printf.c applies it to a ``*`` argument."""
    return (value + 2**31) % 2**32 - 2**31


def printf_min_bytes(fmt: bytes, args: Sequence[Any], int64: Callable[[Any], int]) -> int:
    """A lower bound on the bytes SQLite's ``printf(fmt, *args)`` builds: per conversion its
    width, and for ``%c`` its precision too (repeated in a loop, even past the length limit).

    The format is read as ``sqlite3_str_vappendf`` reads it (SQLite 3.40 printf.c): flags,
    width (digits or ``*``), precision (``.digits`` or ``.*``), ``l``/``ll``, conversion; an
    unknown conversion ends the output. ``int64`` is SQLite's ``sqlite3_value_int64``.
    """
    used = 0

    def int_arg() -> int:
        nonlocal used
        if used >= len(args):
            return 0
        used += 1
        return _c_int(int64(args[used - 1]))

    def at(k: int) -> int:
        return fmt[k] if k < len(fmt) else 0

    total = i = 0
    while at(i):
        if at(i) != _PERCENT:
            i = fmt.find(b"%", i)
            if i < 0:
                break
        i += 1
        c = at(i)
        width, precision, done = 0, -1, False
        while c:
            if c == _L:
                i += 1 + (at(i + 1) == _L)
                c, done = at(i), True
            elif c in _DIGITS and c != ord("0"):
                wx = 0
                while c in _DIGITS:
                    wx = (wx * 10 + c - ord("0")) & 0xFFFFFFFF
                    i += 1
                    c = at(i)
                width = wx & 0x7FFFFFFF
                if c in (_DOT, _L):
                    i -= 1
                else:
                    done = True
            elif c == _STAR:
                width = int_arg()
                width = (-width if width >= -(2**31 - 1) else 0) if width < 0 else width
                if at(i + 1) not in (_DOT, _L):
                    i += 1
                    c, done = at(i), True
            elif c == _DOT:
                i += 1
                c = at(i)
                if c == _STAR:
                    precision = int_arg()
                    if precision < 0:
                        precision = -precision if precision >= -(2**31 - 1) else -1
                    i += 1
                    c = at(i)
                else:
                    px = 0
                    while c in _DIGITS:
                        px = (px * 10 + c - ord("0")) & 0xFFFFFFFF
                        i += 1
                        c = at(i)
                    precision = px & 0x7FFFFFFF
                if c == _L:
                    i -= 1
                else:
                    done = True
            elif c not in _PRINTF_FLAGS:
                done = True
            if done:
                break
            i += 1
            c = at(i)
        if c not in _PRINTF_TYPES:
            return total
        if c == ord("c"):
            total += max(width, precision)
        elif c != ord("n"):
            total += width
        used += c not in b"n%"   # the conversion's own argument
        i += 1
    return total


class GuardedPrintf:
    """``printf``/``format`` for untrusted SQL: refuse a call whose result would be over the
    length limit, else run SQLite's own printf on a private in-memory connection (the same
    results, NULL for an over-long result included). Register with ``functools.partial(p, name)``."""

    def __init__(self, max_bytes: int, fail: Callable[[str], None]) -> None:
        self.max_bytes = max_bytes
        self.fail = fail              # records the model-facing reason before the call fails
        self._conn: sqlite3.Connection | None = None

    def _sqlite(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(":memory:", check_same_thread=False)
            self._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, self.max_bytes)
        return self._conn

    def _int64(self, value: Any) -> int:
        if isinstance(value, int):
            return value
        row = self._sqlite().execute("SELECT printf('%d', ?)", (value,)).fetchone()
        return int(row[0])

    def __call__(self, name: str, *args: Any) -> Any:
        fmt = args[0] if args else None
        if isinstance(fmt, str | bytes):
            text = fmt.encode() if isinstance(fmt, str) else fmt
            needed = printf_min_bytes(text.split(b"\0", 1)[0], args[1:], self._int64)
            if needed > self.max_bytes:
                reason = (
                    f"string or blob too big: {name}() would build at least {needed} bytes, over the "
                    f"limit of {self.max_bytes} bytes on one value; use a smaller width or precision"
                )
                self.fail(reason)
                raise ValueError(reason)
        marks = ", ".join("?" * len(args))
        try:
            return self._sqlite().execute(f"SELECT printf({marks})", args).fetchone()[0]
        except sqlite3.OperationalError as exc:   # Python cannot hand back text that is not UTF-8
            reason = (f"{name}() built text that is not valid UTF-8 ({exc}); a width or precision "
                      "counts bytes unless the ! flag makes it count characters")
            self.fail(reason)
            raise ValueError(reason) from None

    def close(self) -> None:
        """Close the private connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
