"""What a POI's searchable text is, and how text becomes tokens (the same for the index, the queries,
and the ``rank_bm25`` peer in ``bench/search.py``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import Stemmer

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the to was were with near "
    "i me my we our you your it's this these those there here what which who want wants looking "
    "find recommend some any".split()
)


@lru_cache(maxsize=1)
def _stemmer() -> Stemmer.Stemmer:
    return Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """Lower-case words and numbers, stop words dropped, English (Snowball) stems."""
    words = [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]
    return list(_stemmer().stemWords(words)) if words else []


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return list(json.loads(value))
    return list(value)


def document_text(poi: Mapping[str, Any]) -> str:
    """The text a POI is found by: name, categories, where it is, what it sells, tags, description."""
    parts = [poi["name"], poi["subcategory"], poi["category"], poi["city"], poi["district"], poi["business_area"],
             " ".join(_list(poi["specialties"])), " ".join(_list(poi["tags"])), poi["description"]]
    return " . ".join(parts)
