"""The description grammar of ViPER's tasks: what a policy writes, how it is read, and the gold.

One item per line, positions and sizes as shares of the frame (the image in stage 1, the crop in
stage 2), so that a description does not depend on the resolution:

    circle red at (0.31,0.62) size 0.12
    sign yellow "STOP" at (0.40,0.52)

- a **shape** (``circle``, ``square``, ``triangle``, ``star``, ``diamond``, ``hexagon``), its colour
  (one of ``rlyard.scene_render.COLOURS``), ``at (x,y)`` its centre (x from the left, y from the
  top, 0–1) and ``size s`` its width as a share of the frame's width (0–1];
- a **sign**: its colour, its text in double quotes (1–16 characters) and ``at (x,y)``; its size
  follows from the text.

Words are case-insensitive; a line may start with ``-``, ``*``, ``•`` or ``1.``; a trailing ``.``,
``,`` or ``;`` is ignored. The text read is the content of the last closed ``<answer>…</answer>``
block, else the whole text. A line that does not read is malformed, and so is the description:
the error names the line and says what was expected. Input is bounded before any pattern runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reward_service.answers import answer_block, shown
from reward_service.ssl.answers import GoldError, Parsed
from rlyard.scene_render import COLOURS, SHAPES, Box

SIGN = "sign"
CLASSES = (*SHAPES, SIGN)
TASKS = ("viper_image", "viper_instance")
MAX_DESCRIPTION_CHARS = 4000
MAX_OUTPUT_CHARS = 20_000         # the whole output, reasoning included (the rewards' text limit)
MAX_ITEMS = 24
MAX_LINE_CHARS = 120
MAX_SIGN_TEXT = 16
MAX_SIDE = 1024
EXPECTED = '`<shape> <colour> at (x,y) size s` or `sign <colour> "TEXT" at (x,y)`'

_NUM = r"(?:\d{1,3}(?:\.\d{1,4})?|\.\d{1,4})"
_LINE = re.compile(
    r"(?:[-*•]\s*|\d{1,2}[.)]\s*)?"
    r"(?P<cls>[A-Za-z]+)\s+(?P<colour>[A-Za-z]+)"
    r"(?:\s+\"(?P<text>[^\"\n]{1,16})\")?"
    rf"(?:\s+at\s*\(\s*(?P<x>{_NUM})\s*,\s*(?P<y>{_NUM})\s*\))?"
    rf"(?:\s+size\s+(?P<size>{_NUM}))?"
    r"\s*[.,;]?", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """One described thing: class, colour, centre ``(x, y)`` and ``size`` as shares of the frame
    (``None`` where not given), and a sign's ``text``."""

    cls: str
    colour: str
    x: float | None = None
    y: float | None = None
    size: float | None = None
    text: str | None = None

    @property
    def is_sign(self) -> bool:
        """Whether it is a sign (a text), not a shape."""
        return self.cls == SIGN


@dataclass(frozen=True)
class GoldItem:
    """A thing drawn on a scene, in pixels: class, colour, box (exclusive ends), a sign's text."""

    cls: str
    colour: str
    box: Box
    text: str | None = None


@dataclass(frozen=True)
class GoldScene:
    """What a reward needs of a scene: its seed and size, and what is drawn, signs first (the
    order the generator draws them in)."""

    seed: int
    width: int
    height: int
    items: tuple[GoldItem, ...]

    @property
    def frame(self) -> Box:
        """The whole image as a frame."""
        return (0, 0, self.width, self.height)


# ---------------------------------------------------------------------------- writing
def _num(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def format_item(item: Item, decimals: int = 2) -> str:
    """One line of the grammar (position and size as given; ``None`` leaves them out)."""
    parts = [item.cls, item.colour]
    if item.text is not None:
        parts.append(f'"{item.text}"')
    if item.x is not None and item.y is not None:
        parts.append(f"at ({_num(item.x, decimals)},{_num(item.y, decimals)})")
    if item.size is not None:
        parts.append(f"size {_num(item.size, decimals)}")
    return " ".join(parts)


def format_description(items: Sequence[Item], decimals: int = 2) -> str:
    """The lines of a description."""
    return "\n".join(format_item(i, decimals) for i in items)


def describe_gold(gold: GoldItem, frame: Box, *, position: bool = True) -> Item:
    """The exact ``Item`` of a drawn thing in a frame (``decimals=3`` recovers its pixels on images
    up to 1,000 pixels wide; 2 decimals are within half a pixel on 100 pixels)."""
    fx0, fy0, fx1, fy1 = frame
    fw, fh = fx1 - fx0, fy1 - fy0
    x0, y0, x1, y1 = gold.box
    x = ((x0 + x1) / 2 - fx0) / fw if position else None
    y = ((y0 + y1) / 2 - fy0) / fh if position else None
    size = None if gold.cls == SIGN else (x1 - x0) / fw
    return Item(gold.cls, gold.colour, x, y, size, gold.text)


def gold_description(scene: GoldScene) -> list[Item]:
    """The scene's items in a fixed order: shapes left to right (then top to bottom), then signs."""
    shapes = sorted((g for g in scene.items if g.cls != SIGN), key=lambda g: (g.box[0] + g.box[2], g.box[1]))
    signs = sorted((g for g in scene.items if g.cls == SIGN), key=lambda g: (g.box[0] + g.box[2], g.box[1]))
    return [describe_gold(g, scene.frame) for g in [*shapes, *signs]]


# ---------------------------------------------------------------------------- reading
def answer_content(text: str, tag: str = "answer") -> tuple[str | None, str]:
    """The content of the last closed ``<tag>…</tag>`` block, else the whole text, stripped;
    ``(None, why)`` for a tag never closed or an empty answer."""
    return answer_block(text, tag, " \t\r\n`")


def _parse_line(line: str, where: str, *, position_required: bool) -> Item | str:
    """An item, or the reason (``malformed: …``) the line is not one."""
    bad = f"malformed: {where} {shown(line, 50)}"
    if len(line) > MAX_LINE_CHARS:
        return f"malformed: {where} is {len(line)} characters long (at most {MAX_LINE_CHARS}); expected {EXPECTED}"
    m = _LINE.fullmatch(line)
    if m is None:
        return f"{bad} is not an item; expected {EXPECTED}"
    cls, colour = m["cls"].lower(), m["colour"].lower()
    if cls not in CLASSES:
        return f"{bad}: {cls!r} is not a class; classes: {', '.join(CLASSES)}"
    if colour not in COLOURS:
        return f"{bad}: {colour!r} is not a colour; colours: {', '.join(COLOURS)}"
    values = {k: float(m[k]) for k in ("x", "y", "size") if m[k] is not None}
    for key in ("x", "y"):
        if key in values and values[key] > 1:
            return f"{bad}: {key} {m[key]} is outside 0–1 (a share of the frame)"
    if "size" in values and not 0 < values["size"] <= 1:
        return f"{bad}: size {m['size']} is outside (0, 1] (a share of the frame's width)"
    if position_required and "x" not in values:
        return f"{bad} has no position; expected {EXPECTED}"
    text = m["text"]
    if cls == SIGN:
        if text is None or not text.strip():
            return f'{bad}: a sign needs its text in double quotes, e.g. sign white "STOP" at (0.40,0.52)'
        if "size" in values:
            return f"{bad}: a sign's size follows from its text; give no size"
        text = " ".join(text.split())
    else:
        if text is not None:
            return f"{bad}: only a sign has a text"
        if "size" not in values:
            return f"{bad}: a shape needs `size s` (its width as a share of the frame's width)"
    return Item(cls, colour, values.get("x"), values.get("y"), values.get("size"), text)


def parse_description(text: str, tag: str = "answer", *, max_items: int = MAX_ITEMS,
                      max_chars: int = MAX_DESCRIPTION_CHARS) -> Parsed[tuple[Item, ...]]:
    """A stage-1 description: one item per line, each with its position."""
    if len(text) > MAX_OUTPUT_CHARS:                          # bounded before any search
        return Parsed(None, f"malformed: the output is {len(text)} characters long (at most {MAX_OUTPUT_CHARS}); "
                            f"a description is read up to {max_chars} characters")
    content, why = answer_content(text, tag)
    if content is None:
        return Parsed(None, f"malformed: {why}; expected one item per line, each {EXPECTED}, in <{tag}>…</{tag}>")
    if len(content) > max_chars:
        return Parsed(None, f"malformed: the description is {len(content)} characters long; at most {max_chars} "
                            "are read", content[:200])
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    if len(lines) > max_items:
        return Parsed(None, f"malformed: {len(lines)} items described; at most {max_items} are read", content[:200])
    items = []
    for no, line in enumerate(lines, 1):
        parsed = _parse_line(line, f"line {no}", position_required=True)
        if isinstance(parsed, str):
            return Parsed(None, parsed, content[:200])
        items.append(parsed)
    return Parsed(tuple(items), raw=content)


def parse_instance(text: str, tag: str = "answer") -> Parsed[Item]:
    """A stage-2 answer: one item (its position in the crop is optional)."""
    if len(text) > MAX_OUTPUT_CHARS:
        return Parsed(None, f"malformed: the output is {len(text)} characters long (at most {MAX_OUTPUT_CHARS}); "
                            f"the answer is one line of at most {MAX_LINE_CHARS} characters")
    content, why = answer_content(text, tag)
    if content is None:
        return Parsed(None, f"malformed: {why}; expected one item, {EXPECTED}, in <{tag}>…</{tag}>")
    lines = [line.strip() for line in content.splitlines() if line.strip()]
    if len(lines) != 1:
        return Parsed(None, f"malformed: {len(lines)} lines given; expected one item, {EXPECTED}", content[:200])
    parsed = _parse_line(lines[0], "the answer", position_required=False)
    if isinstance(parsed, str):
        return Parsed(None, parsed, content[:200])
    return Parsed(parsed, raw=content)


# ---------------------------------------------------------------------------- the gold
def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GoldError(f"ground truth {where} is {value!r}, not an integer")
    return value


def _box(value: Any, where: str, width: int, height: int) -> Box:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise GoldError(f"ground truth {where} is {value!r}, not a box [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (_int(v, where) for v in value)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise GoldError(f"ground truth {where} {[x0, y0, x1, y1]} is not a box inside the {width}x{height} image")
    return (x0, y0, x1, y1)


def _gold_of(ground_truth: Any, task: str) -> Mapping[str, Any]:
    if not isinstance(ground_truth, Mapping):
        raise GoldError(f"the ground truth is {type(ground_truth).__name__}, not an object with the {task} task")
    if ground_truth.get("task") != task:
        raise GoldError(f"the ground truth is of task {ground_truth.get('task')!r}, not {task!r}")
    return ground_truth


def gold_scene(ground_truth: Any, task: str = "viper_image") -> GoldScene:
    """The scene of a ViPER ground truth: ``{"task", "scene": {seed, width, height, objects,
    texts}}`` as ``envs.vision.scenes.Scene.describe`` writes it."""
    scene = _gold_of(ground_truth, task).get("scene")
    if not isinstance(scene, Mapping):
        raise GoldError("the ground truth has no `scene` (the scene's description)")
    seed, width, height = (_int(scene.get(k), f"scene.{k}") for k in ("seed", "width", "height"))
    if seed < 0 or not 32 <= width <= MAX_SIDE or not 32 <= height <= MAX_SIDE:
        raise GoldError(f"ground truth scene: seed {seed}, {width}x{height} is not a scene (seed >= 0, "
                        f"sides 32–{MAX_SIDE})")
    objects, texts = scene.get("objects"), scene.get("texts")
    if not isinstance(objects, list) or not isinstance(texts, list) or len(objects) + len(texts) > 4 * MAX_ITEMS:
        raise GoldError(f"ground truth scene: `objects` and `texts` must be lists of at most {4 * MAX_ITEMS} in all")
    items = []
    for i, t in enumerate(texts):
        where = f"scene.texts[{i}]"
        if not isinstance(t, Mapping) or not isinstance(t.get("text"), str) or t.get("sign") not in COLOURS:
            raise GoldError(f"ground truth {where} needs `text` and a `sign` colour, got {t!r}"[:300])
        items.append(GoldItem(SIGN, str(t["sign"]), _box(t.get("box"), f"{where}.box", width, height), t["text"]))
    for i, o in enumerate(objects):
        where = f"scene.objects[{i}]"
        if not isinstance(o, Mapping) or o.get("shape") not in SHAPES or o.get("colour") not in COLOURS:
            raise GoldError(f"ground truth {where} needs a `shape` and a `colour`, got {o!r}"[:300])
        box = _box(o.get("box"), f"{where}.box", width, height)
        if box[2] - box[0] != box[3] - box[1] or (box[2] - box[0]) % 2 == 0:
            raise GoldError(f"ground truth {where}.box {list(box)} is not a shape's box (square, odd side)")
        items.append(GoldItem(str(o["shape"]), str(o["colour"]), box))
    return GoldScene(seed, width, height, tuple(items))


def gold_instance(ground_truth: Any) -> tuple[GoldScene, int, Box]:
    """A stage-2 ground truth: the scene, the index of the target in ``GoldScene.items`` and the
    crop, from ``{"task": "viper_instance", "scene", "target": {"kind": "object"|"text",
    "index"}, "crop": [x0, y0, x1, y1]}``."""
    scene = gold_scene(ground_truth, "viper_instance")
    target = ground_truth.get("target")
    if not isinstance(target, Mapping) or target.get("kind") not in ("object", "text"):
        raise GoldError(f"ground truth `target` is {target!r}, not {{\"kind\": \"object\"|\"text\", \"index\": i}}")
    index = _int(target.get("index"), "target.index")
    signs = sum(1 for g in scene.items if g.cls == SIGN)
    count = signs if target["kind"] == "text" else len(scene.items) - signs
    if not 0 <= index < count:
        raise GoldError(f"ground truth target {target['kind']} {index} does not exist (the scene has {count})")
    position = index if target["kind"] == "text" else signs + index
    crop = _box(ground_truth.get("crop"), "crop", scene.width, scene.height)
    return scene, position, crop
