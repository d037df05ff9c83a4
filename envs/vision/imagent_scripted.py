"""A scripted policy for the IMAgent tasks: an oracle of *where* to look, a pixel reader of *what*.

``ScriptedImagentPolicy`` is a vision ``BatchGenerator`` (``trainer.policy.base``: ``generate``
with ``images=``, ``ImageTokenizer``), so the local sampler and the rollout engine run it like a
VLM: it reads its prompt's token ids and images and writes token ids. Where each task's tiles are
comes from the tasks' ground truth (``oracle_boxes``: the one thing the script is told); the answer
is read from the pixels of the images in its context, never from the ground truth:

- ``use_tools=True``: the first turn calls ``zoom`` on every tile the question needs (through the
  real tool server); the next turn reads the asked square in each zoom result the server returned
  (``read_square``: its colour's mean) and answers — the colour nearest among the tile's four
  (``tile_colour``), or the image whose square is nearest the asked colour (``which_image``);
- ``use_tools=False``: the first turn reads the same squares the same way in the prompt's previews
  (the input resolution) and answers at once.

A task is recognised by the first image of its prompt (each task has scenes of its own).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.vision.imagent import QUADRANTS, nearest_colour, oracle_boxes, quadrant_boxes, read_square
from envs.vision.scenes import decode_png
from rlyard.domain import ImagePart, Task
from rlyard.scene_render import COLOURS
from trainer.model.vision import IMAGE_PAD, VISION_END, VISION_START
from trainer.policy.base import Generation, SamplingParams

ZOOM_FACTOR = 4
IMAGE_TOKENS = 4              # pad tokens per image: the script reads bytes, not tokens


def _key(image: ImagePart) -> str:
    return hashlib.sha256(image.data).hexdigest()


class ScriptedImagentPolicy:
    """Answers IMAgent tasks by reading pixels, with or without the image tools (module docstring).

    ``tokenizer``: a vision tokenizer (the tiny VLM's: it has Qwen2-VL's vision tokens and a chat
    template that renders image parts); ``tasks``: the tasks it will be asked (for where to look).
    """

    supports_images = True

    def __init__(self, tokenizer: Any, tasks: Sequence[Task], *, use_tools: bool = True) -> None:
        self.tokenizer = tokenizer
        self.use_tools = use_tools
        self.image_pad_id = int(tokenizer.convert_tokens_to_ids(IMAGE_PAD))
        self.image_placeholder = VISION_START + IMAGE_PAD + VISION_END
        self.end_id = int(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self._tasks: dict[str, Task] = {}
        for task in tasks:
            previews = [a for a in task.attachments if a.image_id.startswith("preview-")]
            self._tasks[_key(previews[0])] = task

    def image_tokens(self, image: ImagePart) -> int:
        """A fixed number of pads per image."""
        return IMAGE_TOKENS

    def generate(self, prompts: list[list[int]], params: SamplingParams, *,
                 images: Sequence[Sequence[ImagePart]] | None = None) -> list[Generation]:
        """One turn per prompt: the zoom calls, or the answer read from the images in context."""
        rows = images if images is not None else [()] * len(prompts)
        out = []
        for row in rows:
            text = self._turn(list(row))
            ids = [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)]
            ids = [*ids[: params.max_new_tokens - 1], self.end_id]
            out.append(Generation(token_ids=ids, logprobs=[0.0] * len(ids), raw_logprobs=[0.0] * len(ids),
                                  finish_reason="stop", stop_reason=self.end_id))
        return out

    def _turn(self, images: list[ImagePart]) -> str:
        if not images:
            return "<answer>no image</answer>"
        task = self._tasks.get(_key(images[0]))
        if task is None:
            return "<answer>unknown task</answer>"
        gt = task.ground_truth
        n = len(gt["tiles"])
        looks = oracle_boxes(gt)
        shown = images[n:]                         # what the tools returned, in the order of the calls
        if self.use_tools and not shown:
            calls = [{"name": "zoom", "arguments": {"image_id": image_id, "box": box, "factor": ZOOM_FACTOR}}
                     for image_id, box in looks]
            return "".join(f"<tool_call>{json.dumps(c)}</tool_call>" for c in calls)
        if self.use_tools and len(shown) < len(looks):      # a call failed or its image was cut off
            return "<answer>not seen</answer>"
        readings = []
        for k, (image_id, box) in enumerate(looks):
            tile = next(t for t in gt["tiles"] if t["image_id"] == image_id)
            square = quadrant_boxes(tuple(tile["box"]))[QUADRANTS.index(gt["quadrant"])]
            if self.use_tools:
                pixels = decode_png(shown[k].data)
                origin, scale = (box[0], box[1]), pixels.shape[1] / (box[2] - box[0])
            else:
                pixels = decode_png(images[int(image_id.split("-")[1])].data)
                origin, scale = (0, 0), pixels.shape[1] / int(gt["size"])
            # the candidates as the question lists them (sorted), never in the tile's order
            readings.append((image_id, sorted(tile["colours"]), read_square(pixels, square, origin, scale)))
        if gt["kind"] == "tile_colour":
            _, colours, rgb = readings[0]
            return f"<answer>{nearest_colour(rgb, colours)}</answer>"
        want = np.asarray(COLOURS[gt["colour"]], dtype=np.float64)
        best = min(readings, key=lambda r: float(np.sum((r[2] - want) ** 2)))
        return f"<answer>{best[0]}</answer>"
