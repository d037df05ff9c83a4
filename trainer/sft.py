"""Supervised fine-tuning on trajectories with loss masks.

Data: a JSONL file, one example per line, in either of two forms (they may be mixed):

- Token form — ``{"prompt_ids": [...], "token_ids": [...], "loss_mask": [...]}``: exactly the ids
  the model sees. ``prompt_ids`` is optional (default ``[]``, never trained); ``loss_mask`` has one
  0/1 per entry of ``token_ids`` (1 = train on this token). This is what a saved rollout looks like.
- Message form — ``{"messages": [...], "tools": [...]}``: chat messages rendered with the
  tokenizer's chat template (``tools`` optional, passed to the template). Each assistant turn's
  text after its generation header (``<|im_start|>assistant\\n``), through its end-of-turn marker,
  gets mask 1; system, user and tool turns and the headers get 0. Each segment is tokenized on
  its own and the ids concatenated — as the rollout engine builds trajectories — so the template
  must render every conversation prefix as a text prefix of the next one.

Images (message form): a line may carry ``"attachments": [{"image_id": "photo", "path":
"photo.png"}]`` (paths relative to the JSONL file, as in a task file) and messages whose content is
a list of parts, ``{"type": "text", "text": ...}`` and ``{"type": "image", "image_id": ...}`` naming
an attachment: in user (or system) messages the prompt's images, in tool messages the images a tool
returned. They render exactly as the rollout engine renders the same conversation, so SFT trains on
the token layout the policy sees at rollout:

- a user message's list content goes to the chat template as it is (the rollout renders the task's
  messages the same way); a tool message's parts are joined by newlines, each image as the vision
  policy's ``image_placeholder`` (text that spells the image pad token is removed first), as the
  engine writes a tool result's content into its observation;
- for a vision policy (``vision=``, an ``ImageTokenizer``) each placeholder's one pad token is then
  expanded to the image's run of ``image_tokens(image)`` pads, and the example's ``images`` are the
  images in the order of their runs;
- for a text policy (no ``vision``) nothing of an image reaches the ids beyond what its rollout
  shows: the template renders a prompt's image part as it does in rollouts (the repo's template: as
  nothing) and a tool message's image as ``ImagePart.placeholder()`` (``[image zoom-1: 112x112
  image/png, 4321 bytes]``), the text a text policy reads in a rollout observation.

Image pads and tool messages are never trained (loss mask 0); an assistant message cannot show an
image. An image part naming no attachment of its line, an unreadable or unsupported image, or a
template that does not render each image part as the placeholder is a ``ConfigError`` naming the
line. The engine's ``max_observation_tokens`` cap is not applied: write observations within it.

Order: examples are visited in a seeded permutation per epoch; ``SftData.cursor`` (examples
consumed so far) is all the state needed to resume at exactly the same example.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlyard.domain import ImagePart
from rlyard.errors import ConfigError
from trainer.batching import TokenBatch, batch_logprobs, collate, length_chunks
from trainer.policy.base import ImageTokenizer
from trainer.policy.hf import HFPolicy
from trainer.tasks import read_attachments

logger = logging.getLogger(__name__)

__all__ = ["SftData", "SftExample", "load_sft_examples", "render_messages", "sft_loss", "sft_step"]


@dataclass(frozen=True)
class SftExample:
    """One training sequence: ``prompt_ids`` (never trained) then ``token_ids`` with ``loss_mask``;
    for a vision policy, the ``images`` whose pad runs the ids hold, in order."""

    prompt_ids: list[int]
    token_ids: list[int]
    loss_mask: list[int]
    images: tuple[ImagePart, ...] = ()


def render_messages(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    attachments: Sequence[ImagePart] = (),
    vision: ImageTokenizer | None = None,
) -> SftExample:
    """Render a conversation with the chat template; assistant turns get mask 1 (see module doc).
    Image parts name ``attachments``; ``vision``: the vision policy whose image runs they become
    (None: a text policy, which reads them as its rollouts show them).

    Raises:
        ValueError: the template does not render prefixes as text prefixes; an image part names no
            attachment, sits in an assistant message, or is not rendered as the placeholder.
    """
    messages, images = _with_images(messages, {image.image_id: image for image in attachments}, vision, tokenizer)
    kwargs: dict[str, Any] = {"tokenize": False}
    if tools:
        kwargs["tools"] = tools
    segments: list[tuple[str, int]] = []
    done = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        header = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, **kwargs) if i else ""
        full = tokenizer.apply_chat_template(messages[: i + 1], **kwargs)
        if not full.startswith(header) or len(header) < done:
            raise ValueError(f"message {i}: the chat template does not render prefixes as text prefixes")
        segments.append((header[done:], 0))
        segments.append((full[len(header):], 1))
        done = len(full)
    whole = tokenizer.apply_chat_template(messages, **kwargs)
    if not whole.startswith("".join(text for text, _ in segments)):
        raise ValueError("the chat template does not render prefixes as text prefixes")
    segments.append((whole[done:], 0))
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in segments:
        if text:
            piece = tokenizer.encode(text, add_special_tokens=False)
            ids += piece
            mask += [trained] * len(piece)
    if vision is None:
        return SftExample(prompt_ids=[], token_ids=ids, loss_mask=mask)
    ids, mask = _expand_images(ids, mask, images, vision)
    return SftExample(prompt_ids=[], token_ids=ids, loss_mask=mask, images=tuple(images))


def _with_images(messages: list[dict[str, Any]], attached: Mapping[str, ImagePart], vision: ImageTokenizer | None,
                 tokenizer: Any) -> tuple[list[dict[str, Any]], list[ImagePart]]:
    """The messages as the chat template is to render them (a tool message's parts joined into the
    text its rollout observation holds) and the images their image parts show, in order."""
    pad_text = "" if vision is None else str(tokenizer.decode([vision.image_pad_id], skip_special_tokens=False,
                                                              clean_up_tokenization_spaces=False))
    out: list[dict[str, Any]] = []
    images: list[ImagePart] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        role = message.get("role")
        texts: list[str] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image":
                image = attached.get(str(part.get("image_id", "")))
                if image is None:
                    raise ValueError(f"message {i} ({role}): an image part names {part.get('image_id')!r}, which is "
                                     f"not among the line's attachments ({', '.join(sorted(attached)) or 'none'}); "
                                     'add it to "attachments": [{"image_id": ..., "path": ...}]')
                if role == "assistant":
                    raise ValueError(f"message {i}: an assistant message cannot show an image (the policy writes "
                                     "text); put the prompt's images in a user message, a tool's in a tool message")
                images.append(image)
                texts.append(image.placeholder() if vision is None else vision.image_placeholder)
            elif isinstance(part, str):
                texts.append(part.replace(pad_text, "") if pad_text else part)
            elif isinstance(part, dict) and part.get("type") == "text":
                text = str(part.get("text", ""))
                texts.append(text.replace(pad_text, "") if pad_text else text)
            elif role == "tool":
                raise ValueError(f"message {i} (tool): a content part is a string, {{\"type\": \"text\", ...}} or "
                                 f"{{\"type\": \"image\", \"image_id\": ...}}, got {part!r}")
        if role == "tool":      # as the engine writes a tool result's content into the observation
            out.append({**message, "content": "\n".join(texts)})
        else:
            out.append(message)
    return out, (images if vision is not None else [])


def _expand_images(ids: list[int], mask: list[int], images: Sequence[ImagePart],
                   vision: ImageTokenizer) -> tuple[list[int], list[int]]:
    """Each image pad token replaced by its image's run of ``image_tokens(image)`` pads (mask 0)."""
    pad = vision.image_pad_id
    rendered = ids.count(pad)
    if rendered != len(images):
        raise ValueError(f"the chat template rendered {rendered} image placeholder(s) for {len(images)} image "
                         f"part(s); it must render each image part as {vision.image_placeholder!r} (and no text "
                         "may spell the image pad token)")
    out_ids: list[int] = []
    out_mask: list[int] = []
    shown = iter(images)
    for token, trained in zip(ids, mask, strict=True):
        if token == pad:
            run = vision.image_tokens(next(shown))
            out_ids += [pad] * run
            out_mask += [0] * run
        else:
            out_ids.append(token)
            out_mask.append(trained)
    return out_ids, out_mask


def _parse_line(record: Any, tokenizer: Any, where: str, base: Path, vision: ImageTokenizer | None) -> SftExample:
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    if "messages" in record:
        attachments = read_attachments(record.get("attachments") or [], base, where)
        try:
            return render_messages(tokenizer, record["messages"], record.get("tools"), attachments=attachments,
                                   vision=vision)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if "token_ids" not in record or "loss_mask" not in record:
        raise ConfigError(f"{where}: give either `messages` or `token_ids` with `loss_mask`")
    if record.get("attachments"):
        raise ConfigError(f"{where}: `attachments` go with message-form lines; a token-form line cannot say "
                          "where its images' pad runs are")
    tokens, mask = list(record["token_ids"]), list(record["loss_mask"])
    if len(tokens) != len(mask):
        raise ConfigError(f"{where}: {len(tokens)} token_ids but {len(mask)} loss_mask values")
    return SftExample(prompt_ids=list(record.get("prompt_ids", [])), token_ids=tokens, loss_mask=mask)


def load_sft_examples(path: Path | str, tokenizer: Any, *, vision: ImageTokenizer | None = None) -> list[SftExample]:
    """Read an SFT JSONL (either form per line; blank lines skipped). ``vision``: the vision policy
    that the lines' images are rendered for (None: a text policy; see the module doc).

    Raises:
        ConfigError: missing file, bad JSON, a line in neither form, or a bad image (a part naming no
            attachment, an unreadable file); the message names the line.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sft data {path} does not exist; point the stage's `data:` at a JSONL file")
    examples: list[SftExample] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: not valid JSON: {exc}") from None
        examples.append(_parse_line(record, tokenizer, f"{path}:{lineno}", path.parent, vision))
    if not examples:
        raise ConfigError(f"{path} holds no examples")
    if not any(sum(e.loss_mask) for e in examples):
        raise ConfigError(f"{path}: no example has a token with loss_mask 1, so there is nothing to train")
    return examples


class SftData:
    """Seeded, resumable batches over SFT examples.

    Epoch e visits the examples in ``randperm(n)`` drawn from a generator seeded with
    ``seed + e``; a batch takes the next ``batch_size`` examples, crossing epoch boundaries.
    """

    def __init__(self, examples: Sequence[SftExample], *, seed: int, pad_token_id: int, cursor: int = 0) -> None:
        if not examples:
            raise ValueError("SftData needs at least one example")
        self.examples = list(examples)
        self.seed = seed
        self.pad_token_id = pad_token_id
        self.cursor = cursor
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(len(self.examples), generator=gen).tolist()}
        return self._orders[epoch]

    def indices(self, batch_size: int) -> list[int]:
        """The example indices of the next batch, advancing the cursor."""
        n = len(self.examples)
        out = []
        for k in range(self.cursor, self.cursor + batch_size):
            out.append(self._order(k // n)[k % n])
        self.cursor += batch_size
        return out

    def next_batch(self, batch_size: int) -> TokenBatch:
        """Collate the next ``batch_size`` examples."""
        chosen = [self.examples[i] for i in self.indices(batch_size)]
        return collate(
            [e.prompt_ids for e in chosen],
            [e.token_ids for e in chosen],
            [e.loss_mask for e in chosen],
            pad_token_id=self.pad_token_id,
            images=[e.images for e in chosen],
        )


def sft_loss(policy: HFPolicy, batch: TokenBatch, *, per: int | None = None) -> tuple[torch.Tensor, int]:
    """Negative log-likelihood of the masked tokens (with grad) summed and divided by ``per`` (default:
    their count, so the mean), and the count. A micro-batch of a larger batch divides by the
    batch's count, so that the micro-batches' losses add up to the batch's mean."""
    logprobs, _ = batch_logprobs(policy, batch, with_grad=True, compute_entropy=False, positions=batch.loss_mask)
    mask = batch.loss_mask.to(logprobs.device, logprobs.dtype)
    count = int(mask.sum())
    loss = -(logprobs * mask).sum() / max(count if per is None else per, 1)
    return loss, count


# Rows a forward pass of ``sft_step`` takes: the batch sorted by length in chunks of this many, each
# padded only to its own longest row. The same loss and gradient as one pass over the whole batch
# (to float rounding), 38% less time a step on the demo's demonstrations (rows of 100–640 tokens,
# ~45% of a batch of 16 padding), 0.96 s against 1.55 s on 2 cores.
SFT_MICRO_ROWS = 4


def sft_step(
    policy: HFPolicy,
    optimizer: torch.optim.Optimizer,
    batch: TokenBatch,
    *,
    max_grad_norm: float = 1.0,
    scheduler: Any = None,
    micro_rows: int = SFT_MICRO_ROWS,
) -> dict[str, float]:
    """One optimizer step on the masked NLL (the mean over the batch's loss tokens, accumulated over
    length-sorted micro-batches of ``micro_rows``); returns ``loss``, ``grad_norm``, ``tokens``, ``lr``."""
    policy.model.train()
    optimizer.zero_grad(set_to_none=True)
    count = batch.num_tokens
    loss = 0.0
    for rows in length_chunks(batch.attention_mask.sum(dim=1), micro_rows):
        part, _ = sft_loss(policy, batch.select(rows).trimmed(), per=count)
        part.backward()
        loss += float(part.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.model.parameters(), max_grad_norm)
    optimizer.step()
    lr = float(optimizer.param_groups[0]["lr"])
    if scheduler is not None:
        scheduler.step()
    return {"loss": loss, "grad_norm": float(grad_norm), "tokens": float(count), "lr": lr}
