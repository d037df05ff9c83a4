"""ViPER tasks: coarse-to-fine perception on synthetic scenes, scored by render-and-compare.

Two kinds, each a ``rlyard.domain.Task`` whose image is a PNG attachment, shown to a vision
policy by an image part of the user message, and whose ground truth holds the gold description
that the reward of its stage renders and compares (``reward_service.viper`` is the one definition
of the grammar, for the prompts here and the rewards there):

- ``image`` (stage 1, ``viper_image``): the scene → every shape and sign, one per line, with
  class, colour, position and size;
- ``instance`` (stage 2, ``viper_instance``): a crop around one shape or sign of the scene (its
  box with a margin) → that thing's class, colour and size relative to the crop, or its text.

The split is ``ssl_tasks``' (fixed by a hash of the scene seed), so a held-out ViPER task never
shows a scene that any train task, of ViPER or SSL4RL, shows.

    python -m envs.vision.viper_tasks --task all --n 100 --out data/generated/viper
    python -m envs.vision.viper_tasks --task image --split heldout --n 20 --out data/generated/viper

writes ``DIR/<kind>_<split>.jsonl`` (``trainer.tasks`` lines), the PNGs under
``DIR/images/<task_id>/``, and ``DIR/<kind>_<split>_demos.jsonl``: the gold answers as SFT
conversations whose prompt shows the task's image (``attachments`` and an image part, as
``trainer.sft`` reads them), so the warm-up before RL trains the answer on the picture it describes.
``--text-demos`` writes them text only (the prompt without its image, as before).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from envs.vision.scenes import Scene, encode_png, make_scene
from envs.vision.ssl_tasks import SPLITS, scene_seeds, scene_split
from reward_service.viper.description import (
    SIGN,
    Item,
    describe_gold,
    format_description,
    format_item,
    gold_description,
    gold_scene,
)
from rlyard.domain import ImagePart, Task
from rlyard.errors import ConfigError
from rlyard.scene_render import COLOURS, SHAPES

KINDS = ("image", "instance")
REWARD_SPECS: dict[str, dict[str, Any]] = {"image": {"viper_image": 1.0}, "instance": {"viper_instance": 1.0}}
SYSTEM_PROMPT = "You describe images precisely. Give only the answer, in <answer>…</answer>."


@dataclass(frozen=True)
class ViperConfig:
    """The tasks' shape: the scene's side, the crop's margin around its object (a share of the
    object's longer side, at least 2 pixels) and the decimals of the gold answers."""

    size: int = 128
    margin: float = 0.25
    decimals: int = 2

    def __post_init__(self) -> None:
        if not 48 <= self.size <= 1024:
            raise ConfigError(f"size {self.size}: use a side of 48 to 1024 pixels")
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"margin {self.margin}: use 0 to 2 (a share of the object's side)")
        if not 2 <= self.decimals <= 3:
            raise ConfigError(f"decimals {self.decimals}: use 2 or 3")


@dataclass(frozen=True)
class ViperExample:
    """One generated task: its image, question, gold answer and ground truth."""

    task_id: str
    kind: str
    split: str
    scene: Scene
    question: str
    image_id: str
    image: np.ndarray
    answer: str
    ground_truth: dict[str, Any] = field(default_factory=dict)

    def attachment(self) -> ImagePart:
        """The image as a PNG attachment."""
        return ImagePart(encode_png(self.image), "image/png", self.image.shape[1], self.image.shape[0], self.image_id)

    def messages(self, *, with_image: bool = True) -> list[dict[str, Any]]:
        """The system and user messages; the user's shows the image by an image part."""
        content: Any = ([{"type": "image", "image_id": self.image_id}, {"type": "text", "text": self.question}]
                        if with_image else self.question)
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def to_task(self) -> Task:
        """The ``rlyard.domain.Task``: no tools, the image attached, the gold in the ground truth."""
        return Task(self.task_id, self.messages(), [], {}, self.ground_truth, (self.attachment(),))

    def demo(self, image_path: str | None = None) -> dict[str, Any]:
        """The gold answer as an SFT conversation (message form): the prompt showing the image at
        ``image_path`` (relative to the demo file), or without its image when None."""
        answer = {"role": "assistant", "content": f"<answer>{self.answer}</answer>"}
        if image_path is None:
            return {"messages": [*self.messages(with_image=False), answer]}
        return {"attachments": [{"image_id": self.image_id, "path": image_path}],
                "messages": [*self.messages(), answer]}


def _vocabulary() -> str:
    return f"Shapes: {', '.join(SHAPES)}. Colours: {', '.join(COLOURS)}."


def image_question(decimals: int = 2) -> str:
    """The stage-1 question: the grammar, the vocabulary and an example."""
    example = format_description([Item("circle", "red", 0.31, 0.62, 0.12),
                                  Item(SIGN, "yellow", 0.4, 0.52, text="STOP")], decimals)
    return ("Image `scene` shows shapes and signs outdoors. Describe every shape and every sign, one per line. "
            "A shape: `<shape> <colour> at (x,y) size s`, where (x,y) is its centre (x from the left, y from the "
            "top) and s its width, as shares of the image's width and height (0 to 1, "
            f"{decimals} decimals). A sign: `sign <colour> \"TEXT\" at (x,y)`. {_vocabulary()} "
            f"For example:\n<answer>{example}</answer>")


def instance_question() -> str:
    """The stage-2 question."""
    return ("Image `object` is a crop of a picture around one shape or one sign. Say what it is in one line: "
            "`<shape> <colour> size s`, where s is its width as a share of the crop's width (0 to 1), or "
            f"`sign <colour> \"TEXT\"` for a sign. {_vocabulary()} For example: <answer>circle red size 0.55</answer> "
            "or <answer>sign yellow \"STOP\"</answer>.")


def crop_box(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The object's box grown by ``margin`` × its longer side (at least 2 pixels), inside the image."""
    x0, y0, x1, y1 = box
    m = max(2, math.ceil(margin * max(x1 - x0, y1 - y0)))
    return (max(0, x0 - m), max(0, y0 - m), min(width, x1 + m), min(height, y1 + m))


def make_example(kind: str, scene_seed: int, config: ViperConfig | None = None) -> ViperExample:
    """The task of ``kind`` on the scene of ``scene_seed``: the same arguments give the same task.
    An instance task's object is drawn from the scene's shapes and signs by a generator seeded by
    the scene seed."""
    if kind not in KINDS:
        raise ConfigError(f"unknown ViPER task {kind!r}; use one of {', '.join(KINDS)}")
    config = config or ViperConfig()
    scene = make_scene(scene_seed, config.size, config.size)
    description = scene.describe()
    split = scene_split(scene_seed)
    task_id = f"viper-{kind}-{split}-{scene_seed}"
    base = {"scene_seed": scene_seed, "split": split, "scene": description}
    gold = gold_scene({"task": "viper_image", "scene": description})
    if kind == "image":
        answer = format_description(gold_description(gold), config.decimals)
        ground_truth = {"task": "viper_image", "answer": answer, **base}
        return ViperExample(task_id, kind, split, scene, image_question(config.decimals), "scene", scene.image,
                            answer, ground_truth)
    rng = np.random.default_rng([scene_seed, 22])
    position = int(rng.integers(len(gold.items)))          # signs first, then shapes: GoldScene's order
    signs = sum(1 for g in gold.items if g.cls == SIGN)
    target = ({"kind": "text", "index": position} if position < signs
              else {"kind": "object", "index": position - signs})
    item = gold.items[position]
    crop = crop_box(item.box, config.margin, gold.width, gold.height)
    answer = format_item(describe_gold(item, crop, position=False), config.decimals)
    x0, y0, x1, y1 = crop
    ground_truth = {"task": "viper_instance", "answer": answer, "target": target, "crop": list(crop), **base}
    return ViperExample(task_id, kind, split, scene, instance_question(), "object",
                        np.ascontiguousarray(scene.image[y0:y1, x0:x1]), answer, ground_truth)


def generate(kind: str, n: int, split: str = "train", start: int = 0,
             config: ViperConfig | None = None) -> Iterator[ViperExample]:
    """``n`` tasks of ``kind`` on the first ``n`` scenes of ``split`` from seed ``start`` on."""
    for seed in scene_seeds(split, n, start):
        yield make_example(kind, seed, config)


def write_tasks(examples: Iterable[ViperExample], path: Path, demos: Path | None = None, *,
                demo_images: bool = True) -> int:
    """Write a task JSONL at ``path``, each task's PNG under ``images/<task_id>/`` beside it and,
    with ``demos``, the gold answers as SFT conversations (showing the task's PNG unless not
    ``demo_images``); the number of tasks written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if demos is not None:
        demos.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out, ExitStack() as stack:
        sft = stack.enter_context(demos.open("w", encoding="utf-8")) if demos else None
        for ex in examples:
            rel = f"images/{ex.task_id}/{ex.image_id}.png"
            part = ex.attachment()
            (path.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / rel).write_bytes(part.data)
            line = {"task_id": ex.task_id, "messages": ex.messages(), "tools": [], "ground_truth": ex.ground_truth,
                    "attachments": [{"image_id": ex.image_id, "path": rel, "mime_type": part.mime_type,
                                     "width": part.width, "height": part.height}],
                    "reward_spec": REWARD_SPECS[ex.kind]}
            out.write(json.dumps(line) + "\n")
            if sft is not None and demos is not None:
                shown = os.path.relpath(path.parent / rel, demos.parent) if demo_images else None
                sft.write(json.dumps(ex.demo(shown)) + "\n")
            count += 1
    return count


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m envs.vision.viper_tasks``: write ViPER task files and their SFT demonstrations."""
    parser = argparse.ArgumentParser(prog="python -m envs.vision.viper_tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=[*KINDS, "all"], required=True)
    parser.add_argument("--n", type=int, default=100, help="tasks per kind")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--start", type=int, default=0, help="the first scene seed to consider")
    parser.add_argument("--size", type=int, default=ViperConfig.size)
    parser.add_argument("--margin", type=float, default=ViperConfig.margin)
    parser.add_argument("--decimals", type=int, default=ViperConfig.decimals)
    parser.add_argument("--text-demos", action="store_true",
                        help="write the demonstrations text only (the prompt without its image)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    try:
        config = ViperConfig(size=args.size, margin=args.margin, decimals=args.decimals)
    except ConfigError as exc:
        parser.error(str(exc))
    for kind in KINDS if args.task == "all" else (args.task,):
        path = args.out / f"{kind}_{args.split}.jsonl"
        demos = args.out / f"{kind}_{args.split}_demos.jsonl"
        count = write_tasks(generate(kind, args.n, args.split, args.start, config), path, demos,
                            demo_images=not args.text_demos)
        print(f"{path}: {count} {kind} tasks ({args.split}); demonstrations in {demos}")


if __name__ == "__main__":
    main()
