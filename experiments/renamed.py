"""Renamed worlds: copies of the local-services database whose cities and districts carry invented
names, and questions rewritten to match.

Why (``docs/envs.md``, ``renamed_worlds`` of the learning environment): held-out questions name places that no training
text shows, so what they need above all is copying an unfamiliar name from the question into the
right slot of the query. RL questions about the train cities name places that the demonstrations
and the policy already know, so GRPO on them never practises that. Rewritten into a renamed world,
the same question needs the same copying as a held-out one, without using a held-out name: the
invented names are pinyin-like strings of two or three syllables that are not any place name of
the world (train or held-out) nor a street name.

A world is the source database with ``city.name``, ``district.name`` and the place parts of
``merchant.name`` and ``merchant.address`` renamed; every other row and every id is the same, so a
rewritten gold query returns the rows of the original with the names swapped.
"""

from __future__ import annotations

import random
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.local_services.database import DB_ID, STREETS, place_names

SYLLABLES = tuple(
    "an ba bai bao bei bin bo cai cang chao chen cheng chun da dan dao de deng dong du fan fang fei feng fu gan gao "
    "ge gong gu guan gui hai han hao he heng hong hu hua huai huang hui jia jian jiang jiao jin jing ju kai kang lan "
    "lang le li lian liang lin ling liu long lu luo ma mao mei meng min ming mu nan ning pan peng ping pu qi qian "
    "qiao qin qing qiu quan rong ru sha shan shang shen sheng shi shu shun song su tai tang tao tian ting tong wan "
    "wei wen wu xi xia xian xiang xiao xin xing xiu xu xuan ya yan yang yao ye yi yin ying yong you yu yuan yue yun "
    "ze zhang zhao zhen zheng zhi zhong zhou zhu zi".split())


@dataclass(frozen=True)
class World:
    """A renamed copy: its ``db_id`` and the new name of every city and district."""

    db_id: str
    names: dict[str, str]

    def rewrite(self, text: str) -> str:
        """``text`` (a question or SQL) with every place name, plain or as an SQL literal, renamed."""
        return rename(text, self.names)


def invent_names(n: int, rng: random.Random, taken: set[str], syllables: tuple[str, ...] = SYLLABLES) -> list[str]:
    """``n`` distinct pinyin-like names (two syllables, sometimes three; 4–10 letters), none of them
    in ``taken`` (compared case-blind; the new names are added to it).

    Raises:
        RuntimeError: ``100 n + 1000`` draws did not find ``n`` names (the syllables allow too few).
    """
    names: list[str] = []
    for _ in range(100 * n + 1000):
        if len(names) == n:
            return names
        name = "".join(rng.choice(syllables) for _ in range(rng.choice((2, 2, 2, 3)))).capitalize()
        if 4 <= len(name) <= 10 and name.lower() not in taken:
            taken.add(name.lower())
            names.append(name)
    raise RuntimeError(f"could not invent {n} distinct names (taken: {len(taken)})")


def _pattern(names: dict[str, str]) -> tuple[re.Pattern[str], dict[str, str]]:
    forms = dict(names)
    forms.update({old.replace("'", "''"): new for old, new in names.items() if "'" in old})
    alternatives = "|".join(re.escape(k) for k in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"), forms


def rename(text: str, names: dict[str, str]) -> str:
    """Whole-word renaming, the longest name first; ``Xi''an`` (an SQL literal's escaped quote)
    is renamed like ``Xi'an``. New names have no quote, so their literals need no escaping."""
    if not names:
        return text
    pattern, forms = _pattern(names)
    return pattern.sub(lambda m: forms[m.group(0)], text)


def build_world(source: Path, db_dir: Path, db_id: str, names: dict[str, str]) -> Path:
    """Write ``db_dir/db_id/db_id.sqlite``: ``source`` with its places renamed by ``names`` (which
    must cover every city and district of ``source``)."""
    path = db_dir / db_id / f"{db_id}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    conn = sqlite3.connect(tmp)
    try:
        for table in ("city", "district"):
            rows = conn.execute(f"SELECT rowid, name FROM {table}").fetchall()
            missing = sorted(name for _, name in rows if name not in names)
            if missing:
                raise ValueError(f"no new name for {table} {missing}")
            conn.executemany(f"UPDATE {table} SET name = ? WHERE rowid = ?", [(names[n], i) for i, n in rows])
        pattern, forms = _pattern(names)
        rows = conn.execute("SELECT merchant_id, name, address FROM merchant").fetchall()
        conn.executemany("UPDATE merchant SET name = ?, address = ? WHERE merchant_id = ?",
                         [(pattern.sub(lambda m: forms[m.group(0)], name),
                           pattern.sub(lambda m: forms[m.group(0)], address), mid) for mid, name, address in rows])
        conn.commit()
    finally:
        conn.close()
    tmp.replace(path)
    return path


def build_worlds(source: Path, db_dir: Path, count: int, seed: int) -> list[World]:
    """``count`` renamed copies of ``source`` under ``db_dir`` (db ids ``local_services_r00`` …),
    deterministic from ``seed``; no invented name repeats across worlds."""
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        places = [r[0] for r in conn.execute("SELECT name FROM city UNION ALL SELECT name FROM district")]
    finally:
        conn.close()
    taken = {n.lower() for n in (*place_names(), *places, *STREETS)}
    rng = random.Random(f"renamed/{seed}")
    worlds = []
    for k in range(count):
        world = World(f"{DB_ID}_r{k:02d}", dict(zip(places, invent_names(len(places), rng, taken), strict=True)))
        build_world(source, db_dir, world.db_id, world.names)
        worlds.append(world)
    return worlds


def rewrite_task(line: dict[str, Any], world: World) -> dict[str, Any]:
    """A task line (``experiments.sql_learning.task_line`` form) moved into ``world``: its question, gold
    SQL and db ids rewritten, its task id suffixed with the world's."""
    messages = [dict(m) for m in line["messages"]]
    messages[-1]["content"] = world.rewrite(messages[-1]["content"])
    suffix = world.db_id.removeprefix(DB_ID)
    return {**line, "task_id": f"{line['task_id']}{suffix}", "messages": messages,
            "context": {**line["context"], "db_id": world.db_id},
            "ground_truth": {**line["ground_truth"], "db_id": world.db_id,
                             "query": world.rewrite(line["ground_truth"]["query"])}}
