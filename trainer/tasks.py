"""Task sources for RL stages: a JSONL of tasks, with the tools of the tool server.

Each line: ``{"task_id", "question" | "messages", "context"?, "ground_truth"?, "system"?,
"attachments"?}``; ``attachments`` are images put into the tool session, ``[{"image_id", "path"}]``
(relative to the task file), which a message shows to a vision policy with
``{"type": "image", "image_id": ...}`` in its content. Any other field with a string, number or
boolean value becomes one of the task's ``labels`` (e.g. ``"template"``, which the graph memory
can take as the task's type).
A ``question`` becomes a user message after an optional system message; the tool
schemas (OpenAI function-calling form) come from the tool server's ``ListTools``,
restricted to ``tools`` when the line names them (``"tools": []`` renders none: the prompt
describes the tools itself, as the compact learning environment does).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rlyard.domain import ImagePart, Task
from rlyard.errors import ConfigError
from rlyard.tools.v1 import tools_pb2

DEFAULT_SYSTEM = (
    "You are an agent that answers by calling tools. Think in <think>…</think>, call tools with "
    "<tool_call>{\"name\": …, \"arguments\": {…}}</tool_call>, and give the final answer in <answer>…</answer>."
)


# the fields of a task line that are the task itself; any other scalar field is a label
_TASK_FIELDS = frozenset({"task_id", "question", "messages", "system", "tools", "context", "ground_truth",
                          "attachments"})


def openai_tools(specs: list[tools_pb2.ToolSpec]) -> list[dict[str, Any]]:
    """``ListTools`` specs as OpenAI function-calling schemas (what chat templates render)."""
    return [
        {"type": "function", "function": {"name": s.name, "description": s.description,
                                          "parameters": json.loads(s.parameters_json_schema)}}
        for s in specs
    ]


def load_tasks(path: Path, tools: list[dict[str, Any]], system: str = DEFAULT_SYSTEM) -> list[Task]:
    """Read a task JSONL; a bad line is a ConfigError naming the line."""
    if not path.is_file():
        raise ConfigError(f"task file {path} does not exist")
    tasks = []
    by_name = {t["function"]["name"]: t for t in tools}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{no}: not JSON: {exc}") from None
        if "messages" in obj:
            messages = list(obj["messages"])
        elif "question" in obj:
            messages = [{"role": "system", "content": obj.get("system", system)},
                        {"role": "user", "content": str(obj["question"])}]
        else:
            raise ConfigError(f"{path}:{no}: a task needs 'question' or 'messages'")
        names = obj.get("tools")
        task_tools = tools if names is None else [by_name[n] for n in names if n in by_name]
        labels = {str(k): str(v) for k, v in obj.items()
                  if k not in _TASK_FIELDS and isinstance(v, str | int | float | bool)}
        tasks.append(Task(str(obj.get("task_id", no)), messages, task_tools,
                          {str(k): str(v) for k, v in (obj.get("context") or {}).items()}, obj.get("ground_truth"),
                          read_attachments(obj.get("attachments") or [], path.parent, f"{path}:{no}"), labels))
    if not tasks:
        raise ConfigError(f"{path} holds no tasks")
    return tasks


_MIME_OF_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def read_attachments(entries: list[Any], base: Path, where: str) -> tuple[ImagePart, ...]:
    """A line's ``attachments`` (a task's, or an SFT demonstration's):
    ``[{"image_id": "photo", "path": "photo.png"}, ...]``, each path relative to ``base`` (the file's
    folder); messages show one with ``{"type": "image", "image_id": ...}``.

    Raises:
        ConfigError: a malformed entry, a repeated ``image_id``, or an image that cannot be read;
            the message starts with ``where``.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(entries, list):
        raise ConfigError(f"{where}: `attachments` is a list of {{\"image_id\": ..., \"path\": ...}}, got {entries!r}")
    out: list[ImagePart] = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("image_id") or not entry.get("path"):
            raise ConfigError(f"{where}: an attachment is {{\"image_id\": ..., \"path\": ...}}, got {entry!r}")
        if any(image.image_id == str(entry["image_id"]) for image in out):
            raise ConfigError(f"{where}: two attachments are named {entry['image_id']!r}; give each its own image_id")
        file = base / str(entry["path"])
        try:
            data = file.read_bytes()
            with Image.open(file) as image:
                width, height, fmt = image.width, image.height, str(image.format)
        except (OSError, UnidentifiedImageError) as exc:
            raise ConfigError(f"{where}: attachment {entry['image_id']!r}: cannot read {file}: {exc}") from None
        if fmt not in _MIME_OF_FORMAT:
            raise ConfigError(f"{where}: attachment {entry['image_id']!r} is {fmt}; use PNG, JPEG, WebP or GIF")
        out.append(ImagePart(data, _MIME_OF_FORMAT[fmt], width, height, str(entry["image_id"])))
    return tuple(out)


class TaskSampler:
    """Draws ``n`` tasks per step without replacement within an epoch, reproducibly: the
    order of epoch ``e`` is a shuffle seeded by (seed, e), so the cursor alone resumes it."""

    def __init__(self, tasks: list[Task], seed: int) -> None:
        self.tasks = tasks
        self.seed = seed
        self._epoch: tuple[int, list[int]] = (-1, [])

    def at(self, pos: int) -> Task:
        """The task at position ``pos`` of the endless shuffled stream."""
        epoch, index = divmod(pos, len(self.tasks))
        if self._epoch[0] != epoch:  # one shuffle per epoch, not per position
            order = list(range(len(self.tasks)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._epoch = (epoch, order)
        return self.tasks[self._epoch[1][index]]

    def take(self, cursor: int, n: int) -> list[Task]:
        """The tasks at positions cursor … cursor + n − 1 of the endless shuffled stream."""
        return [self.at(pos) for pos in range(cursor, cursor + n)]
