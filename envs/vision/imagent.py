"""IMAgent-style multi-image questions: a detail that the policy's input resolution cannot show.

Each task shows 2–4 synthetic scenes (``envs.vision.scenes``) downscaled to the policy's input
resolution (``input_size``; attachments ``preview-<k>``) and puts them at full resolution
(``size``; attachments ``image-<k>``) into the tool session, where ``crop``/``zoom``/``revisit``
read them. Next to one shape of every scene sits a **tile**: one input pixel's footprint
(``size // input_size`` full-resolution pixels a side) split into four squares of four colours.
Two kinds of question:

- ``tile_colour``: "what colour is the top-left square of the tile next to the red circle in
  image-2?" → a colour (chance 1/4);
- ``which_image``: every image's tile holds the same four colours, arranged so that the asked
  square differs: "in which image is the tile's top-left square red?" → ``image-k`` (chance 1/n).

Why unreadable at input resolution: the preview is the block mean of the full image
(``INTER_AREA`` at an integer factor), and the tile fills exactly one block, so every arrangement
of its four colours gives the same preview pixel. The previews are the same whatever the answer
(``preview_is_answer_free`` checks it by drawing every arrangement); after a zoom the squares are
several pixels each. The gold is in the ground truth, scored by ``qa_em``.

    python -m envs.vision.imagent --out data/generated/imagent --n-train 200 --n-heldout 50 --seed 0

writes ``train.jsonl`` / ``heldout.jsonl`` (``trainer.tasks`` lines), the PNGs under ``images/``,
``train_demos.jsonl`` (SFT: the oracle's zoom calls run through the real tools in-process, then the
gold; the prompt shows the previews and each tool message the zoom the real tool returned, its PNG
under ``images/<task_id>/``, so the demos teach reading the zoomed tile; ``--text-demos``: text
only, as before) and ``split.json``. The split is ``ssl_tasks``' scene split: a held-out task shows only
held-out scenes, which no train task of any vision family shows.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from envs.vision.scenes import Scene, encode_png, make_scene
from envs.vision.ssl_tasks import SPLITS, scene_split
from rlyard.domain import ImagePart, Task, TextPart
from rlyard.errors import ConfigError
from rlyard.scene_render import COLOURS

KINDS = ("tile_colour", "which_image")
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")   # the order of a tile's colours
TILE_COLOURS = ("red", "orange", "yellow", "purple", "pink", "blue", "white", "black", "cyan")
TOOLS = ("zoom", "crop", "revisit")
REWARD_SPEC: dict[str, Any] = {"qa_em": 1.0}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
ZOOM_MARGIN = 3                  # the oracle's zoom box: the tile and this many tile sides around it
SYSTEM_PROMPT = (
    "You answer questions about several images. Each image is shown small; the tools see it at full "
    "resolution. Tools: zoom (image_id, box [left, top, right, bottom] in full-resolution pixels, factor), "
    "crop (image_id, box), revisit (image_id, box). Call one with "
    '<tool_call>{"name": "zoom", "arguments": {"image_id": "image-0", "box": [0, 0, 28, 28], "factor": 4}}'
    "</tool_call>; several calls may share a turn. Give the final answer in <answer>…</answer>."
)


@dataclass(frozen=True)
class ImagentConfig:
    """Full resolution (``size``, what the tools see), the policy's input resolution (``input_size``,
    what the prompt shows) and how many images a task has. ``size / input_size`` must be an even
    integer of at least 4: the tile is one input pixel wide and each square at least 2 pixels."""

    size: int = 448
    input_size: int = 112
    min_images: int = 2
    max_images: int = 4

    def __post_init__(self) -> None:
        if not 28 <= self.input_size <= 512:
            raise ConfigError(f"input_size {self.input_size}: use 28 to 512 pixels (the tiny VLM reads up to 112)")
        factor, rest = divmod(self.size, self.input_size)
        if rest or factor < 4 or factor % 2:
            raise ConfigError(f"size {self.size} / input_size {self.input_size}: the ratio must be an even integer "
                              f">= 4 (e.g. 448 / 112), so that a tile fills one input pixel exactly")
        if self.size > 2048:
            raise ConfigError(f"size {self.size}: use at most 2048 pixels")
        if not 2 <= self.min_images <= self.max_images <= 4:
            raise ConfigError(f"images {self.min_images}..{self.max_images}: use 2 <= min_images <= max_images <= 4")

    @property
    def factor(self) -> int:
        """Full-resolution pixels per input pixel (a side); the tile's side."""
        return self.size // self.input_size


@dataclass(frozen=True)
class Tile:
    """A tile: its image, its box ``(x0, y0, x1, y1)`` in full-resolution pixels, its colours in
    ``QUADRANTS`` order and the shape it stands next to."""

    image_id: str
    box: tuple[int, int, int, int]
    colours: tuple[str, str, str, str]
    landmark: str

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (the ground truth holds it)."""
        return {"image_id": self.image_id, "box": list(self.box), "colours": list(self.colours),
                "landmark": self.landmark}


@dataclass(frozen=True)
class ImagentExample:
    """One task: its scenes at full resolution with their tiles, previews, question and gold."""

    task_id: str
    kind: str
    split: str
    question: str
    images: tuple[np.ndarray, ...]         # full resolution, tile drawn
    previews: tuple[np.ndarray, ...]       # input resolution
    answer: str
    ground_truth: dict[str, Any] = field(default_factory=dict)

    def attachments(self) -> tuple[ImagePart, ...]:
        """``image-<k>`` (full resolution, for the tools) then ``preview-<k>`` (what the prompt shows)."""
        full = tuple(ImagePart(encode_png(a), "image/png", a.shape[1], a.shape[0], f"image-{k}")
                     for k, a in enumerate(self.images))
        small = tuple(ImagePart(encode_png(a), "image/png", a.shape[1], a.shape[0], f"preview-{k}")
                      for k, a in enumerate(self.previews))
        return full + small

    def messages(self, *, with_images: bool = True) -> list[dict[str, Any]]:
        """The system and user messages; the user's shows each preview after a line naming its image."""
        size, small = self.images[0].shape[1], self.previews[0].shape[1]
        parts: list[dict[str, Any]] = []
        lines: list[str] = []
        for k in range(len(self.images)):
            line = f"image-{k} ({size}x{size}, shown at {small}x{small}):"
            if with_images:
                parts += [{"type": "text", "text": line}, {"type": "image", "image_id": f"preview-{k}"}]
            else:
                lines.append(line)
        if with_images:
            parts.append({"type": "text", "text": self.question})
            content: Any = parts
        else:
            content = "\n".join([*lines, self.question])
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def to_task(self) -> Task:
        """The ``rlyard.domain.Task``: the images attached, the gold in the ground truth."""
        return Task(self.task_id, self.messages(), [], {}, self.ground_truth, self.attachments())


# ---------------------------------------------------------------------------- drawing
def draw_tile(image: np.ndarray, box: tuple[int, int, int, int], colours: Sequence[str]) -> None:
    """Four flat squares filling ``box`` (no anti-aliasing), colours in ``QUADRANTS`` order, in place."""
    for (qx0, qy0, qx1, qy1), name in zip(quadrant_boxes(box), colours, strict=True):
        image[qy0:qy1, qx0:qx1] = COLOURS[name]


def quadrant_boxes(box: tuple[int, int, int, int]) -> list[tuple[int, int, int, int]]:
    """The boxes of a tile's four squares, in ``QUADRANTS`` order."""
    x0, y0, x1, y1 = box
    mx, my = (x0 + x1) // 2, (y0 + y1) // 2
    return [(x0, y0, mx, my), (mx, y0, x1, my), (x0, my, mx, y1), (mx, my, x1, y1)]


def downscale(image: np.ndarray, input_size: int) -> np.ndarray:
    """The image at the policy's input resolution: block means (``INTER_AREA`` at an integer factor)."""
    return np.ascontiguousarray(cv2.resize(image, (input_size, input_size), interpolation=cv2.INTER_AREA))


def _overlaps(box: tuple[int, int, int, int], others: Sequence[Sequence[int]], gap: int) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in others)


def place_tile(scene: Scene, config: ImagentConfig) -> tuple[tuple[int, int, int, int], str] | None:
    """A tile's box beside a shape whose colour and class no other shape of the scene shares, on the
    input-pixel grid, clear of every shape and sign; with the shape's name. None when none fits."""
    f, size = config.factor, config.size
    names = [f"{o.colour} {o.shape}" for o in scene.objects]
    taken = [o.box for o in scene.objects] + [t.box for t in scene.texts]
    for obj, name in zip(scene.objects, names, strict=True):
        if names.count(name) > 1:
            continue
        cy = ((obj.box[1] + obj.box[3]) // 2) // f * f
        right = -(-(obj.box[2] + f) // f) * f
        left = (obj.box[0] - 2 * f) // f * f
        for x in (right, left):
            box = (x, cy, x + f, cy + f)
            if 0 <= x and x + f <= size and 0 <= cy and cy + f <= size and not _overlaps(box, taken, f):
                return box, name
    return None


# ---------------------------------------------------------------------------- tasks
def _scene_seeds(split: str, seed: int) -> Iterator[int]:
    """The scene seeds of ``split`` from ``seed``'s block on (each run seed has its own million)."""
    for s in itertools.count(seed * 1_000_000):
        if scene_split(s) == split:
            yield s


def generate(n: int, split: str = "train", seed: int = 0,
             config: ImagentConfig | None = None) -> Iterator[ImagentExample]:
    """``n`` tasks of ``split``: the same arguments give the same tasks. Each task takes fresh scenes
    of the split (no scene shows twice); its kind, images and tiles come from a generator seeded by
    (seed, split, index)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    config = config or ImagentConfig()
    scenes = _scene_seeds(split, seed)
    for index in range(n):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        n_images = int(rng.integers(config.min_images, config.max_images + 1))
        kind = KINDS[int(rng.integers(len(KINDS)))]
        placed: list[tuple[Scene, tuple[int, int, int, int], str]] = []
        while len(placed) < n_images:
            scene = make_scene(next(scenes), config.size, config.size)
            spot = place_tile(scene, config)
            if spot is not None:
                placed.append((scene, *spot))
        yield _example(kind, split, seed, index, placed, rng, config)


def _example(kind: str, split: str, seed: int, index: int,
             placed: list[tuple[Scene, tuple[int, int, int, int], str]], rng: np.random.Generator,
             config: ImagentConfig) -> ImagentExample:
    n = len(placed)
    quadrant = int(rng.integers(4))
    palette = [str(c) for c in rng.choice(TILE_COLOURS, size=4, replace=False)]
    tiles: list[Tile] = []
    if kind == "tile_colour":
        for k, (_, box, landmark) in enumerate(placed):
            order = [palette[i] for i in rng.permutation(4)]
            tiles.append(Tile(f"image-{k}", box, (order[0], order[1], order[2], order[3]), landmark))
        target = int(rng.integers(n))
        tile = tiles[target]
        answer = tile.colours[quadrant]
        question = (f"Next to the {tile.landmark} in {tile.image_id} there is a small tile of four coloured "
                    f"squares: {', '.join(sorted(palette))}. What colour is its {QUADRANTS[quadrant]} square? "
                    "Answer with the colour.")
        golds = [answer]
        chance = 1 / 4
    else:
        # Same four colours in every tile; the asked square shows a different one in each image.
        at_square = [palette[i] for i in rng.permutation(4)[:n]]
        for k, (_, box, landmark) in enumerate(placed):
            rest = [c for c in palette if c != at_square[k]]
            rest = [rest[i] for i in rng.permutation(3)]
            colours = [*rest[:quadrant], at_square[k], *rest[quadrant:]]
            tiles.append(Tile(f"image-{k}", box, (colours[0], colours[1], colours[2], colours[3]), landmark))
        target = int(rng.integers(n))
        answer = f"image-{target}"
        where = "; ".join(f"{t.image_id}: next to the {t.landmark}" for t in tiles)
        question = (f"Each image has a small tile of four coloured squares ({', '.join(sorted(palette))}) next "
                    f"to a shape ({where}). In which image is the tile's {QUADRANTS[quadrant]} square "
                    f"{at_square[target]}? Answer with the image id.")
        golds = [answer, f"image {target}"]
        chance = 1 / n
    images = []
    for (scene, _, _), tile in zip(placed, tiles, strict=True):
        image = scene.image.copy()
        draw_tile(image, tile.box, tile.colours)
        images.append(image)
    previews = tuple(downscale(a, config.input_size) for a in images)
    task_id = f"imagent-{split}-{seed}-{index}"
    ground_truth = {
        "task": "imagent", "kind": kind, "answers": golds, "answer": answer, "split": split,
        "quadrant": QUADRANTS[quadrant], "colour": at_square[target] if kind == "which_image" else None,
        "target": tiles[target].image_id, "tiles": [t.to_json() for t in tiles], "chance": chance,
        "scene_seeds": [s.seed for s, _, _ in placed], "size": config.size, "input_size": config.input_size,
    }
    return ImagentExample(task_id, kind, split, question, tuple(images), previews, answer, ground_truth)


# ---------------------------------------------------------------------------- checks
def preview_is_answer_free(example: ImagentExample) -> bool:
    """Whether the previews are the same for every arrangement of every tile's colours — so for
    every possible answer — by drawing each of the 24 arrangements and downscaling. The check that
    the detail cannot be read at the input resolution, whatever the reader."""
    size = example.previews[0].shape[0]
    for image, preview, tile in zip(example.images, example.previews, example.ground_truth["tiles"], strict=True):
        canvas = image.copy()
        box = tuple(tile["box"])
        for order in itertools.permutations(tile["colours"]):
            draw_tile(canvas, box, order)     # type: ignore[arg-type]
            if not np.array_equal(downscale(canvas, size), preview):
                return False
    return True


def oracle_boxes(ground_truth: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """Where an oracle looks: for each tile the question needs (the target's for ``tile_colour``,
    every tile for ``which_image``), its image and a box of the tile with ``ZOOM_MARGIN`` tile sides
    around it, inside the image."""
    size = int(ground_truth["size"])
    tiles = ground_truth["tiles"]
    if ground_truth["kind"] == "tile_colour":
        tiles = [t for t in tiles if t["image_id"] == ground_truth["target"]]
    out = []
    for tile in tiles:
        x0, y0, x1, y1 = tile["box"]
        m = ZOOM_MARGIN * (x1 - x0)
        out.append((tile["image_id"], [max(0, x0 - m), max(0, y0 - m), min(size, x1 + m), min(size, y1 + m)]))
    return out


def read_square(pixels: np.ndarray, square: Sequence[int], origin: tuple[float, float], scale: float) -> np.ndarray:
    """The mean RGB of the middle half of ``square`` (full-resolution pixels) in ``pixels``, an image
    of the full image's region from ``origin`` at ``scale`` pixels per full-resolution pixel (a
    preview: origin 0 and scale 1/factor; a zoom: its box's corner and factor). Under a pixel: the
    pixel that holds the square's centre."""
    x0, y0, x1, y1 = ((v - origin[i % 2]) * scale for i, v in enumerate(square))
    qx, qy = (x1 - x0) / 4, (y1 - y0) / 4
    left, right = int(np.floor(x0 + qx)), int(np.ceil(x1 - qx))
    top, bottom = int(np.floor(y0 + qy)), int(np.ceil(y1 - qy))
    h, w = pixels.shape[:2]
    left, top = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    return np.asarray(pixels[top:bottom, left:right].reshape(-1, 3).mean(axis=0), dtype=np.float64)


def nearest_colour(rgb: np.ndarray, names: Sequence[str]) -> str:
    """The name among ``names`` whose colour is nearest to ``rgb`` (first on a tie)."""
    distances = [float(np.sum((rgb - np.asarray(COLOURS[n], dtype=np.float64)) ** 2)) for n in names]
    return names[int(np.argmin(distances))]


# ---------------------------------------------------------------------------- files
def task_line(example: ImagentExample, parts: Sequence[ImagePart], image_paths: dict[str, str]) -> dict[str, Any]:
    """The ``trainer.tasks`` line of a task: its ``attachments()`` ``parts`` at ``image_paths``
    (attachment id → path beside the file)."""
    return {"task_id": example.task_id, "messages": example.messages(), "tools": [],
            "ground_truth": example.ground_truth, "reward_spec": REWARD_SPEC,
            "attachments": [{"image_id": p.image_id, "path": image_paths[p.image_id], "mime_type": p.mime_type,
                             "width": p.width, "height": p.height} for p in parts]}


async def demonstration(example: ImagentExample, tools: Any, *, images: bool = True,
                        ) -> tuple[dict[str, Any], tuple[ImagePart, ...]]:
    """The oracle's path as an SFT conversation: zoom on the tiles it needs, through the real tools
    (``tools``: a ``tool_servers.local.LocalTools`` serving ``TOOLS``), then the gold; and the images
    it shows beyond the task's attachments.

    With ``images`` the prompt shows the previews (as the task's does) and each tool message holds
    the zoom's content as the real tool returned it: its text, then its image (a part naming the
    returned image's id; the caller writes the returned images and lists them, with the previews,
    in the line's ``attachments``). Without, the conversation is text only (the prompt without its
    previews, each tool message the result's text), and no image is returned."""
    sessions = tools.executor.sessions
    session = sessions.open("", {}, 0.0, attachments=example.attachments())
    shown: list[ImagePart] = []
    try:
        calls, results = [], []
        for n, (image_id, box) in enumerate(oracle_boxes(example.ground_truth)):
            arguments = {"image_id": image_id, "box": box, "factor": 4}
            result = await tools.executor.call(session.session_id, {}, f"demo{n}", "zoom", json.dumps(arguments))
            if result.is_error:
                raise RuntimeError(f"{example.task_id}: the oracle's zoom {arguments} fails: {result.text}")
            calls.append({"type": "function", "function": {"name": "zoom", "arguments": arguments}})
            if not images:
                results.append({"role": "tool", "name": "zoom", "content": result.text})
                continue
            parts: list[dict[str, Any]] = []
            for part in result.content:
                if isinstance(part, ImagePart):
                    if not part.image_id or part.image_id in {p.image_id for p in (*shown, *example.attachments())}:
                        raise RuntimeError(f"{example.task_id}: the zoom returned an image without an id of its "
                                           f"own ({part.image_id!r})")
                    shown.append(part)
                    parts.append({"type": "image", "image_id": part.image_id})
                else:
                    parts.append({"type": "text", "text": part.text if isinstance(part, TextPart) else part.dumps()})
            results.append({"role": "tool", "name": "zoom", "content": parts})
    finally:
        sessions.close(session.session_id)
    calling = {"role": "assistant", "content": "", "tool_calls": calls}
    answer = {"role": "assistant", "content": f"<answer>{example.answer}</answer>"}
    return ({"task_id": example.task_id,
             "messages": [*example.messages(with_images=images), calling, *results, answer]}, tuple(shown))


def write_split(examples: Sequence[ImagentExample], out: Path, name: str, demos: bool = False, *,
                demo_images: bool = True) -> int:
    """Write ``out/<name>.jsonl`` and the PNGs under ``out/images/<task_id>/``; with ``demos``,
    ``out/<name>_demos.jsonl`` too: with ``demo_images`` showing the previews and the zooms the real
    tool returned (written as ``images/<task_id>/<returned id>.png``), else text only. The number of
    tasks written."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.jsonl").open("w", encoding="utf-8") as f:
        for ex in examples:
            paths = {}
            parts = ex.attachments()
            for part in parts:
                rel = f"images/{ex.task_id}/{part.image_id}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(part.data)
                paths[part.image_id] = rel
            f.write(json.dumps(task_line(ex, parts, paths)) + "\n")
    if demos:
        from tool_servers.image.settings import ImageSettings
        from tool_servers.local import LocalTools

        async def all_demos() -> list[tuple[dict[str, Any], tuple[ImagePart, ...]]]:
            with LocalTools(TOOLS, [ImageSettings()]) as tools:
                return [await demonstration(ex, tools, images=demo_images) for ex in examples]

        lines = []
        for ex, (line, returned) in zip(examples, asyncio.run(all_demos()), strict=True):
            if demo_images:
                attached = []
                for k in range(len(ex.previews)):
                    attached.append({"image_id": f"preview-{k}", "path": f"images/{ex.task_id}/preview-{k}.png"})
                for part in returned:
                    rel = f"images/{ex.task_id}/{part.image_id}.{_EXTENSIONS[part.mime_type]}"
                    (out / rel).write_bytes(part.data)
                    attached.append({"image_id": part.image_id, "path": rel})
                line = {"task_id": line["task_id"], "attachments": attached, "messages": line["messages"]}
            lines.append(line)
        (out / f"{name}_demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines), encoding="utf-8")
    return len(examples)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m envs.vision.imagent``: write the train and held-out task files and the demos."""
    parser = argparse.ArgumentParser(prog="python -m envs.vision.imagent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-heldout", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=ImagentConfig.size, help="full resolution (the tools')")
    parser.add_argument("--input-size", type=int, default=ImagentConfig.input_size,
                        help="the policy's input resolution (the prompt's previews)")
    parser.add_argument("--min-images", type=int, default=ImagentConfig.min_images)
    parser.add_argument("--max-images", type=int, default=ImagentConfig.max_images)
    parser.add_argument("--text-demos", action="store_true",
                        help="write the demos text only (no previews in the prompt, the zoom results' text only)")
    args = parser.parse_args(argv)
    if args.n_train < 0 or args.n_heldout < 0 or args.n_train + args.n_heldout == 0:
        parser.error("--n-train and --n-heldout must be >= 0, and not both 0")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    try:
        config = ImagentConfig(args.size, args.input_size, args.min_images, args.max_images)
    except ConfigError as exc:
        parser.error(str(exc))
    train = list(generate(args.n_train, "train", args.seed, config))
    heldout = list(generate(args.n_heldout, "heldout", args.seed, config))
    write_split(train, args.out, "train", demos=True, demo_images=not args.text_demos)
    write_split(heldout, args.out, "heldout")
    info = {"seed": args.seed, "size": config.size, "input_size": config.input_size, "n_train": len(train),
            "n_heldout": len(heldout), "chance_heldout": float(np.mean([e.ground_truth["chance"] for e in heldout]))
            if heldout else None, "kinds": {k: sum(e.kind == k for e in heldout) for k in KINDS}}
    (args.out / "split.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(train)} train tasks (+ demos), {len(heldout)} held-out tasks; "
          f"held-out chance {info['chance_heldout']}")


if __name__ == "__main__":
    main()
