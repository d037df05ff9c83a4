"""Pure functions of SQL execution match: query preprocessing, result decoding and
the comparison of two result tables under the Spider and BIRD semantics.

Sources (read, then reproduced here so that verdicts agree with the official
evaluators):

- Spider test-suite evaluation, taoyds/test-suite-sql-eval ``exec_eval.py``
  (``eval_exec_match``, ``result_eq``, ``quick_rej``, ``multiset_eq``,
  ``postprocess``, ``replace_cur_year``) and ``parse.py`` (``remove_distinct``,
  a token-level removal through sqlparse).
- BIRD, AlibabaResearch/DAMO-ConvAI ``bird/llm/src/evaluation.py``
  (``compute_execution_accuracy``: ``set(ground_truth) == set(predicted)``).

One deliberate difference, with the same verdicts: the official
``get_constraint_permutation`` prunes the candidate column permutations with
20 randomly sampled predicted rows (only when there are more than 3 columns).
Pruning only ever removes permutations that cannot pass the final check, so the
verdict does not depend on the sample. Here every row prunes (deterministic),
each gold column may only map to a predicted column holding the same multiset of
values (a necessary condition of both the ordered and the multiset check), and
the search walks injective partial permutations, rejecting a prefix whose
projected rows already differ as multisets. The final check of a candidate is
the official one, verbatim.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import sqlparse

Row = tuple[Any, ...]

BLOB_KEY = "$blob_hex"


# --- query preprocessing (Spider) -------------------------------------------------


def postprocess(query: str) -> str:
    """Official Spider ``postprocess``: join ``> =``, ``< =`` and ``! =``."""
    query = query.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")
    return query


def remove_distinct(s: str) -> str:
    """Official Spider ``parse.remove_distinct``: drop every sqlparse token spelled
    ``distinct`` (any case). Like the original it keeps only the first statement
    that sqlparse finds, and it raises ``IndexError`` on blank input and
    ``sqlparse.exceptions.SQLParseError`` on inputs past sqlparse's token limit."""
    toks = [t.value for t in list(sqlparse.parse(s)[0].flatten())]
    return "".join([t for t in toks if t.lower() != "distinct"])


_CUR_YEAR_RE = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", flags=re.IGNORECASE)


def replace_cur_year(query: str) -> str:
    """Official Spider ``replace_cur_year`` (applied right before execution)."""
    return _CUR_YEAR_RE.sub("2020", query)


def spider_prepare(query: str, keep_distinct: bool) -> tuple[str, str]:
    """Spider's preprocessing of one query, in the official order.

    Returns ``(for_order_check, to_execute)``: ``postprocess`` then (unless
    ``keep_distinct``) ``remove_distinct``; the official tests ``'order by'`` on
    that string and executes it after ``replace_cur_year``.
    """
    q = postprocess(query)
    if not keep_distinct:
        q = remove_distinct(q)
    return q, replace_cur_year(q)


def order_matters(processed_gold: str) -> bool:
    """Official Spider rule: row order matters iff the (processed) gold says ORDER BY."""
    return "order by" in processed_gold.lower()


# --- prediction extraction ---------------------------------------------------------

_ANSWER_RE = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", flags=re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(
    r"```[ \t]*(?:sqlite3|sqlite|sql)?[ \t]*\r?\n?(.*?)(?:```|\Z)", flags=re.DOTALL | re.IGNORECASE
)


def extract_sql(text: str) -> str:
    """The SQL of a model's answer.

    If the text holds ``<answer>...</answer>``, the content of the last such block
    is kept (an unclosed last ``<answer>`` runs to the end); then, if a Markdown
    code fence is present (```` ```sql ````, ```` ```sqlite ```` or a bare
    ```` ``` ````), the content of the last fenced block is kept. Surrounding
    whitespace is stripped; the SQL itself is not touched.
    """
    answers = _ANSWER_RE.findall(text)
    if answers:
        text = answers[-1]
    if "```" in text:
        blocks = _FENCE_RE.findall(text)
        if blocks:
            text = blocks[-1]
    return text.strip()


# --- result decoding ---------------------------------------------------------------


def decode_value(value: Any) -> Any:
    """A JSON cell of the SQL tool back to the Python value sqlite3 gives: a tagged
    hex blob becomes ``bytes``; ints, floats, strings and None stay as they are."""
    if isinstance(value, dict) and set(value) == {BLOB_KEY}:
        return bytes.fromhex(value[BLOB_KEY])
    if isinstance(value, list | dict):
        raise ValueError(f"unexpected cell value {value!r} in a SQL result")
    return value


def decode_rows(rows: Sequence[Sequence[Any]]) -> list[Row]:
    """JSON rows (lists) → a list of tuples, as ``cursor.fetchall()`` returns them."""
    return [tuple(decode_value(v) for v in row) for row in rows]


# --- Spider comparison: the official helpers, verbatim ------------------------------


def permute_tuple(element: Row, perm: Sequence[int]) -> Row:
    """Official ``permute_tuple``."""
    assert len(element) == len(perm)
    return tuple([element[i] for i in perm])


def unorder_row(row: Row) -> Row:
    """Official ``unorder_row``: the row's values sorted by ``str(x) + str(type(x))``."""
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def quick_rej(result1: list[Row], result2: list[Row], order_matters: bool) -> bool:
    """Official ``quick_rej``: True when the bags of unordered rows may match."""
    s1 = [unorder_row(row) for row in result1]
    s2 = [unorder_row(row) for row in result2]
    if order_matters:
        return s1 == s2
    else:
        return set(s1) == set(s2)


def multiset_eq(l1: list[Any], l2: list[Any]) -> bool:
    """Official ``multiset_eq``: equal as bags."""
    if len(l1) != len(l2):
        return False
    d: defaultdict[Any, int] = defaultdict(int)
    for e in l1:
        d[e] = d[e] + 1
    for e in l2:
        d[e] = d[e] - 1
        if d[e] < 0:
            return False
    return True


# --- Spider comparison: deterministic permutation search ----------------------------


def _column_constraints(result1: list[Row], result2: list[Row], num_cols: int) -> list[list[int]]:
    """For each gold column, the predicted columns it may map to.

    A predicted column qualifies when every one of its values occurs in the gold
    column (the official pruning, over all rows) and it holds the same multiset of
    values (implied by either final check).
    """
    tab1_sets_by_columns = [{row[i] for row in result1} for i in range(num_cols)]
    tab1_bags = [Counter(row[i] for row in result1) for i in range(num_cols)]
    tab2_bags = [Counter(row[j] for row in result2) for j in range(num_cols)]
    constraints: list[list[int]] = []
    for i in range(num_cols):
        allowed = [
            j
            for j in range(num_cols)
            if all(row[j] in tab1_sets_by_columns[i] for row in result2) and tab1_bags[i] == tab2_bags[j]
        ]
        constraints.append(allowed)
    return constraints


def candidate_permutations(result1: list[Row], result2: list[Row]) -> Iterator[tuple[int, ...]]:
    """Injective column maps (gold column i → predicted column perm[i]) that can
    still make ``result2`` equal ``result1``, in lexicographic order.

    A prefix is abandoned as soon as the gold and predicted rows, projected on the
    columns chosen so far, differ as multisets (necessary for both final checks).
    """
    num_cols = len(result1[0])
    constraints = _column_constraints(result1, result2, num_cols)
    if any(not allowed for allowed in constraints):
        return
    perm: list[int] = []
    used: set[int] = set()

    def prefix_ok(depth: int) -> bool:
        gold = Counter(row[:depth] for row in result1)
        pred = Counter(tuple(row[j] for j in perm) for row in result2)
        return gold == pred

    def walk(depth: int) -> Iterator[tuple[int, ...]]:
        if depth == num_cols:
            yield tuple(perm)
            return
        for j in constraints[depth]:
            if j in used:
                continue
            perm.append(j)
            used.add(j)
            if depth == 0 or prefix_ok(depth + 1):
                yield from walk(depth + 1)
            perm.pop()
            used.discard(j)

    yield from walk(0)


def result_eq(result1: list[Row], result2: list[Row], order_matters: bool) -> bool:
    """Spider's denotation match (``result1`` gold, ``result2`` predicted): equal up
    to a permutation of columns, as lists when ``order_matters`` else as multisets.

    Same steps and verdicts as the official ``result_eq``; only the enumeration of
    candidate column permutations differs (see the module docstring).
    """
    if len(result1) == 0 and len(result2) == 0:
        return True

    # if length is not the same, then they are definitely different bag of rows
    if len(result1) != len(result2):
        return False

    num_cols = len(result1[0])

    # if the results do not have the same number of columns, they are different
    if len(result2[0]) != num_cols:
        return False

    # unorder each row and compare whether the denotation is the same
    if not quick_rej(result1, result2, order_matters):
        return False

    for perm in candidate_permutations(result1, result2):
        if len(perm) != len(set(perm)):
            continue
        if num_cols == 1:
            result2_perm = result2
        else:
            result2_perm = [permute_tuple(element, perm) for element in result2]
        if order_matters:
            if result1 == result2_perm:
                return True
        else:
            if set(result1) == set(result2_perm) and multiset_eq(result1, result2_perm):
                return True
    return False


# --- BIRD comparison ----------------------------------------------------------------


def bird_eq(gold: list[Row], pred: list[Row]) -> bool:
    """BIRD's execution match: the two results are equal as sets of rows."""
    return set(gold) == set(pred)
