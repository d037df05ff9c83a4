"""SSL4RL tasks: self-supervised questions about synthetic scenes, with answers a rule can check.

Four kinds, each a ``rlyard.domain.Task`` whose images are attachments (PNG) and whose ground truth
holds the answer that the reward of the same name checks (``reward_service.ssl.answers`` is the
one definition of the answer formats, for the prompts here and the rewards there):

- ``rotation``: the scene rotated clockwise by 0/90/180/270 degrees → the angle (``ssl_rotation``);
- ``jigsaw``: the scene cut into k×k tiles, shuffled → for each original position, the shuffled
  tile that belongs there (``ssl_jigsaw``);
- ``position``: the centre patch of a 3×3 grid and one of its 8 neighbours → which neighbour
  (``ssl_position``);
- ``masked_patch``: the scene with a grey hole and N candidate patches → which candidate fills it
  (``ssl_masked_patch``).

The split is fixed by the scene: a scene seed is held out when its hash says so (about one in ten),
for every kind and every run, so no held-out task shows a scene any train task shows.

    python -m envs.vision.ssl_tasks --task rotation --n 100 --out data/generated/ssl
    python -m envs.vision.ssl_tasks --task all --split heldout --n 50 --out data/generated/ssl

writes ``DIR/<task>_<split>.jsonl`` (``trainer.tasks`` lines plus ``attachments``; ``read_tasks``
loads them back with their images) and the PNGs under ``DIR/images/<task_id>/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.vision.scenes import Scene, decode_png, encode_png, make_scene
from reward_service.ssl.answers import POSITIONS, ROTATIONS, TASKS, chance_level, format_answer
from rlyard.domain import ImagePart, Task
from rlyard.errors import ConfigError

SPLITS = ("train", "heldout")
HELDOUT_PER_MILLE = 100            # about one scene in ten is held out
HOLE_GREY = (128, 128, 128)
MIN_PATCH_DIFFERENCE = 12.0         # mean absolute difference between any two masked-patch candidates
# What a kind's maker returns: the ground truth's own fields, the question, the images in prompt order.
Made = tuple[dict[str, Any], str, list[tuple[str, np.ndarray]]]
REWARD_SPECS: dict[str, dict[str, Any]] = {kind: {f"ssl_{kind}": 1.0} for kind in TASKS}

SYSTEM_PROMPT = ("You answer questions about images. Think in <think>…</think>, then give only the answer "
                 "in <answer>…</answer>.")


@dataclass(frozen=True)
class SslConfig:
    """The shape of the tasks: image side, jigsaw grid, masked-patch candidates and patch sizes."""

    size: int = 128                 # scenes are square, so that a rotation does not show in the shape
    grid: int = 2                   # jigsaw: grid × grid tiles
    candidates: int = 4             # masked patch: N candidates
    hole_fraction: float = 0.25     # masked patch: the hole's side as a share of the image's

    def __post_init__(self) -> None:
        if not 48 <= self.size <= 1024:
            raise ConfigError(f"size {self.size}: use a side of 48 to 1024 pixels")
        if not 2 <= self.grid <= 5 or self.size % self.grid:
            raise ConfigError(f"grid {self.grid}: use 2 to 5, dividing the size {self.size} (e.g. size 120 for 3)")
        if not 2 <= self.candidates <= 8:
            raise ConfigError(f"candidates {self.candidates}: use 2 to 8")
        if not 0.1 <= self.hole_fraction <= 0.35:
            raise ConfigError(f"hole_fraction {self.hole_fraction}: use 0.1 to 0.35, so that other patches fit")


@dataclass(frozen=True)
class SslExample:
    """One generated task: its images (id → RGB array, in prompt order) and its ground truth."""

    task_id: str
    kind: str
    split: str
    scene: Scene
    question: str
    images: tuple[tuple[str, np.ndarray], ...]
    ground_truth: dict[str, Any] = field(default_factory=dict)

    def attachments(self) -> tuple[ImagePart, ...]:
        """The images as PNG attachments, named by their ids."""
        return tuple(ImagePart(encode_png(a), "image/png", a.shape[1], a.shape[0], image_id)
                     for image_id, a in self.images)

    def to_task(self) -> Task:
        """The ``rlyard.domain.Task``: no tools, the images attached, the answer in the ground truth."""
        parts = self.attachments()
        shown = "\n".join(p.placeholder() for p in parts)
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"{shown}\n\n{self.question}"}]
        return Task(self.task_id, messages, [], {}, self.ground_truth, parts)


# ---------------------------------------------------------------------------- the split
def scene_split(scene_seed: int) -> str:
    """``"heldout"`` for about one scene seed in ten (fixed by a hash of the seed), else ``"train"``."""
    digest = hashlib.sha256(f"rlyard-ssl-scene:{scene_seed}".encode()).digest()
    return "heldout" if int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PER_MILLE else "train"


def scene_seeds(split: str, n: int, start: int = 0) -> list[int]:
    """The first ``n`` scene seeds ≥ ``start`` that belong to ``split``."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    seeds: list[int] = []
    seed = start
    while len(seeds) < n:
        if scene_split(seed) == split:
            seeds.append(seed)
        seed += 1
    return seeds


# ---------------------------------------------------------------------------- the four kinds
def _rotation(scene: Scene, rng: np.random.Generator, config: SslConfig) -> Made:
    angle = int(rng.choice(ROTATIONS))
    rotated = np.ascontiguousarray(np.rot90(scene.image, -angle // 90))   # np.rot90 turns counter-clockwise
    question = ("Image `rotated` is a photo-like picture of an outdoor scene (sky above the ground, upright "
                "signs) that was rotated clockwise by 0, 90, 180 or 270 degrees. By how many degrees clockwise "
                f"was it rotated? Give the number only, e.g. {format_answer('rotation', 90)}.")
    return {"answer": angle}, question, [("rotated", rotated)]


def tiles_of(image: np.ndarray, grid: int) -> list[np.ndarray]:
    """The grid × grid tiles of an image, in reading order."""
    side = image.shape[0] // grid
    return [image[r * side : (r + 1) * side, c * side : (c + 1) * side] for r in range(grid) for c in range(grid)]


def assemble(tiles: Sequence[np.ndarray], grid: int) -> np.ndarray:
    """Tiles in reading order put back into one image."""
    return np.concatenate([np.concatenate(tiles[r * grid : (r + 1) * grid], axis=1) for r in range(grid)], axis=0)


def _jigsaw(scene: Scene, rng: np.random.Generator, config: SslConfig) -> Made:
    k, n = config.grid, config.grid**2
    tiles = tiles_of(scene.image, k)
    source = [int(i) for i in rng.permutation(n)]          # shuffled position j shows original tile source[j]
    answer = [source.index(i) for i in range(n)]          # original position i: the shuffled tile showing it
    shuffled = assemble([tiles[s] for s in source], k)
    question = (f"Image `shuffled` is a picture cut into a {k}×{k} grid of tiles that were shuffled. The tiles "
                f"are numbered 0 to {n - 1} in reading order (left to right, top to bottom). For each position "
                f"of the original picture, in reading order, give the number of the tile that belongs there: "
                f"{n} numbers separated by spaces (e.g. {format_answer('jigsaw', range(n))} means no tile moved).")
    return {"answer": answer, "grid": k}, question, [("shuffled", shuffled)]


def _position(scene: Scene, rng: np.random.Generator, config: SslConfig) -> Made:
    cell = config.size // 3
    patch = cell * 2 // 3
    name = str(rng.choice(list(POSITIONS)))
    dr, dc = POSITIONS[name]
    boxes = []
    for row, col in ((1, 1), (1 + dr, 1 + dc)):
        # Jitter inside the cell, at least 2 px from its sides: neighbouring patches never touch.
        y = row * cell + int(rng.integers(2, cell - patch - 1))
        x = col * cell + int(rng.integers(2, cell - patch - 1))
        boxes.append((x, y, x + patch, y + patch))
    crops = [scene.image[y0:y1, x0:x1].copy() for x0, y0, x1, y1 in boxes]
    question = ("Both images are patches of one picture cut into a 3×3 grid. Image `centre` comes from the "
                "middle cell; image `neighbour` comes from one of the 8 cells around it. Where is `neighbour` "
                f"relative to `centre`? Answer with one of: {', '.join(POSITIONS)} "
                f"(e.g. {format_answer('position', 'top-left')}).")
    gt = {"answer": name, "centre_box": list(boxes[0]), "neighbour_box": list(boxes[1])}
    return gt, question, [("centre", crops[0]), ("neighbour", crops[1])]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def _masked_patch(scene: Scene, rng: np.random.Generator, config: SslConfig) -> Made:
    size, side = config.size, max(8, int(config.size * config.hole_fraction))
    margin = side // 4
    hx, hy = (int(v) for v in rng.integers(margin, size - side - margin + 1, 2))
    hole = (hx, hy, hx + side, hy + side)
    truth = scene.image[hy : hy + side, hx : hx + side].copy()
    masked = scene.image.copy()
    masked[hy : hy + side, hx : hx + side] = HOLE_GREY
    patches, boxes = [truth], [hole]
    for _ in range(2000):
        if len(patches) == config.candidates:
            break
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        box = (x, y, x + side, y + side)
        if x < hole[2] and hole[0] < box[2] and y < hole[3] and hole[1] < box[3]:
            continue                                       # a distractor shares no pixel with the hole
        candidate = scene.image[y : y + side, x : x + side]
        if all(_mad(candidate, p) >= MIN_PATCH_DIFFERENCE for p in patches):
            patches.append(candidate.copy())
            boxes.append(box)
    else:
        raise ValueError(f"scene {scene.seed}: found no {config.candidates - 1} distinct distractor patches")
    order = [int(i) for i in rng.permutation(config.candidates)]   # candidate i shows patch order[i]
    answer = order.index(0)
    n = config.candidates
    question = (f"Image `masked` is a picture with a square grey hole. Images `candidate_0` to `candidate_{n - 1}` "
                f"are {n} patches of the hole's size; exactly one of them is what the hole covers. Which one? "
                f"Give its number, 0 to {n - 1} (e.g. {format_answer('masked_patch', 0)}).")
    gt = {"answer": answer, "candidates": n, "hole_box": list(hole), "candidate_boxes": [list(boxes[i]) for i in order]}
    images = [("masked", masked)] + [(f"candidate_{i}", patches[order[i]]) for i in range(n)]
    return gt, question, images


_MAKERS = {"rotation": _rotation, "jigsaw": _jigsaw, "position": _position, "masked_patch": _masked_patch}


def make_example(kind: str, scene_seed: int, config: SslConfig | None = None) -> SslExample:
    """The task of ``kind`` on the scene of ``scene_seed``: the same arguments give the same task."""
    if kind not in _MAKERS:
        raise ConfigError(f"unknown SSL task {kind!r}; use one of {', '.join(TASKS)}")
    config = config or SslConfig()
    scene = make_scene(scene_seed, config.size, config.size)
    rng = np.random.default_rng([scene_seed, TASKS.index(kind), 21])
    gt, question, images = _MAKERS[kind](scene, rng, config)
    split = scene_split(scene_seed)
    ground_truth = {"task": kind, **gt, "scene_seed": scene_seed, "split": split}
    return SslExample(f"ssl-{kind}-{split}-{scene_seed}", kind, split, scene, question, tuple(images), ground_truth)


def generate(kind: str, n: int, split: str = "train", start: int = 0,
             config: SslConfig | None = None) -> Iterator[SslExample]:
    """``n`` tasks of ``kind`` on the first ``n`` scenes of ``split`` from seed ``start`` on."""
    for seed in scene_seeds(split, n, start):
        yield make_example(kind, seed, config)


# ---------------------------------------------------------------------------- files
def write_tasks(examples: Iterator[SslExample] | Sequence[SslExample], path: Path) -> int:
    """Write a task JSONL at ``path`` and each task's PNGs under ``images/<task_id>/`` beside it;
    the number of tasks written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for ex in examples:
            task = ex.to_task()
            folder = path.parent / "images" / ex.task_id
            folder.mkdir(parents=True, exist_ok=True)
            attachments = []
            for part in task.attachments:
                (folder / f"{part.image_id}.png").write_bytes(part.data)
                attachments.append({"image_id": part.image_id, "path": f"images/{ex.task_id}/{part.image_id}.png",
                                    "mime_type": part.mime_type, "width": part.width, "height": part.height})
            line = {"task_id": task.task_id, "messages": task.messages, "tools": [],
                    "ground_truth": task.ground_truth, "attachments": attachments,
                    "reward_spec": REWARD_SPECS[ex.kind], "scene": ex.scene.describe()}
            out.write(json.dumps(line) + "\n")
            count += 1
    return count


def read_tasks(path: Path) -> list[Task]:
    """Tasks from a file ``write_tasks`` wrote, with their attachments read from their PNGs."""
    if not path.is_file():
        raise ConfigError(f"task file {path} does not exist")
    tasks = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            parts = tuple(ImagePart((path.parent / a["path"]).read_bytes(), a["mime_type"], a["width"], a["height"],
                                    a["image_id"]) for a in obj.get("attachments", []))
            tasks.append(Task(str(obj["task_id"]), list(obj["messages"]), list(obj.get("tools", [])), {},
                              obj.get("ground_truth"), parts))
        except (json.JSONDecodeError, KeyError, OSError) as exc:
            raise ConfigError(f"{path}:{no}: not an SSL task line ({type(exc).__name__}: {exc})") from None
    return tasks


def image_of(task: Task, image_id: str) -> np.ndarray:
    """The RGB pixels of one of a task's attachments."""
    for part in task.attachments:
        if part.image_id == image_id:
            return decode_png(part.data)
    raise KeyError(f"task {task.task_id} has no image {image_id!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m envs.vision.ssl_tasks``: write SSL task files."""
    parser = argparse.ArgumentParser(prog="python -m envs.vision.ssl_tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*TASKS, "all"], required=True)
    parser.add_argument("--n", type=int, default=100, help="tasks per kind")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--start", type=int, default=0, help="the first scene seed to consider")
    parser.add_argument("--size", type=int, default=SslConfig.size)
    parser.add_argument("--grid", type=int, default=SslConfig.grid)
    parser.add_argument("--candidates", type=int, default=SslConfig.candidates)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        config = SslConfig(size=args.size, grid=args.grid, candidates=args.candidates)
    except ConfigError as exc:
        parser.error(str(exc))
    for kind in TASKS if args.task == "all" else (args.task,):
        path = args.out / f"{kind}_{args.split}.jsonl"
        count = write_tasks(generate(kind, args.n, args.split, args.start, config), path)
        chance = chance_level(kind, grid=config.grid, candidates=config.candidates)
        print(f"{path}: {count} {kind} tasks ({args.split}; chance level {chance:.4g})")


if __name__ == "__main__":
    main()
