"""A vision-language policy (Qwen2-VL) as a ``PolicyBackend`` that takes images.

Images enter the token ids as runs of the image pad token: a prompt shows an image as
``<|vision_start|><|image_pad|><|vision_end|>`` (``image_placeholder``), and the caller expands
the one pad into ``image_tokens(image)`` pads (the image processor's grid, 2×2 patches per token).
Every call then takes, per row, the images whose pad runs its ids hold, in order; the policy turns
them into ``pixel_values`` and ``image_grid_thw`` (the same bytes always give the same tensors),
and computes the multimodal rotary positions itself (``get_rope_index`` over each row's real
tokens), so that sampling (left padding, a KV cache) and scoring (right padding, one pass) see each
token at the same position with the same image features: their log-probs agree to float rounding.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from rlyard.domain import ImagePart
from trainer.policy.base import Generation, SamplingParams
from trainer.policy.hf import HFPolicy, _sample, scored_logprobs
from trainer.policy.prefix_cache import PrefixCache

__all__ = ["VLMPolicy"]

ImageRows = Sequence[Sequence[ImagePart]]

_PROCESSED_CACHE = 256      # images kept processed (a rollout step shows each image every turn)


class VLMPolicy(HFPolicy):
    """A Qwen2-VL (``Qwen2VLForConditionalGeneration``, or any model with its ``get_rope_index``
    and vision tokens) with its image processor. Build it from a checkpoint directory
    (``VLMPolicy(path)``: ``AutoModelForImageTextToText``, ``AutoTokenizer``,
    ``AutoImageProcessor``) or from loaded parts. Sampling is a plain KV-cached loop through the
    transformers forward (no ``FastDecoder``, no prefix cache across turns)."""

    supports_shared_prefix = False

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        model: Any = None,
        tokenizer: Any = None,
        image_processor: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        if model_dir is not None:
            from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype or torch.float32)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
            image_processor = image_processor or AutoImageProcessor.from_pretrained(model_dir)
        elif model is None or tokenizer is None or image_processor is None:
            raise ValueError("VLMPolicy needs a model_dir, or model=, tokenizer= and image_processor=")
        super().__init__(model=model, tokenizer=tokenizer, device=device, dtype=dtype, fast_decode=False)
        config = self.model.config
        if getattr(config, "vision_config", None) is None or getattr(config, "image_token_id", None) is None:
            raise ValueError(f"{type(self.model).__name__} is not a vision-language model (no vision_config)")
        self.image_processor = image_processor
        self.image_pad_id = int(config.image_token_id)
        self.merge_size = int(config.vision_config.spatial_merge_size)
        self.image_placeholder = str(tokenizer.decode(
            [config.vision_start_token_id, config.image_token_id, config.vision_end_token_id],
            skip_special_tokens=False, clean_up_tokenization_spaces=False))
        self._processed: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()     # the sampler's thread and the trainer's may process at once

    # ------------------------------------------------------------------ images
    @property
    def supports_images(self) -> bool:
        """Requests may carry images."""
        return True

    def with_model(self, model: Any) -> VLMPolicy:
        """A policy over ``model`` (e.g. a frozen copy) with this one's tokenizer and image processor."""
        return VLMPolicy(model=model, tokenizer=self.tokenizer, image_processor=self.image_processor,
                         device=self.device)

    def save_pretrained(self, out: str | Path) -> None:
        """The model, the tokenizer and the image processor's ``preprocessor_config.json``."""
        super().save_pretrained(out)
        self.image_processor.save_pretrained(out)

    def image_tokens(self, image: ImagePart) -> int:
        """How many image pad tokens ``image`` becomes (its patch grid / merge size²)."""
        _, grid = self._process(image)
        return int(grid.prod()) // self.merge_size**2

    def _process(self, image: ImagePart) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values [patches, C·T·P·P], image_grid_thw [3])`` of one image, cached by content."""
        key = hashlib.sha256(image.data).hexdigest()
        with self._lock:
            hit = self._processed.get(key)
            if hit is not None:
                self._processed.move_to_end(key)
                return hit
        from PIL import Image

        with Image.open(io.BytesIO(image.data)) as pil:
            rgb = pil.convert("RGB")
        out = self.image_processor(images=[rgb], return_tensors="pt")
        processed = (out["pixel_values"], out["image_grid_thw"][0])
        with self._lock:
            self._processed[key] = processed
            while len(self._processed) > _PROCESSED_CACHE:
                self._processed.popitem(last=False)
        return processed

    def vision_inputs(self, images: ImageRows) -> dict[str, torch.Tensor]:
        """``pixel_values`` and ``image_grid_thw`` of every row's images, row after row (the order in
        which the model fills the rows' pad runs); empty without images."""
        flat = [image for row in images for image in row]
        if not flat:
            return {}
        processed = [self._process(image) for image in flat]
        return {"pixel_values": torch.cat([p for p, _ in processed]).to(self.device, self.model.dtype),
                "image_grid_thw": torch.stack([g for _, g in processed]).to(self.device)}

    def _check_images(self, rows: Sequence[Sequence[int]] | torch.Tensor, images: ImageRows | None) -> ImageRows:
        """``images`` (one entry per row; None: none) after checking that each row's pad tokens are
        exactly its images' tokens."""
        images = [()] * len(rows) if images is None else images
        if len(images) != len(rows):
            raise ValueError(f"{len(images)} rows of images for {len(rows)} rows of tokens")
        for row, (ids, shown) in enumerate(zip(rows, images, strict=True)):
            pads = int((ids == self.image_pad_id).sum()) if isinstance(ids, torch.Tensor) else \
                sum(1 for t in ids if t == self.image_pad_id)
            want = sum(self.image_tokens(image) for image in shown)
            if pads != want:
                raise ValueError(f"row {row}: {pads} image pad tokens for {len(shown)} image(s) of {want} tokens; "
                                 "expand each image's placeholder to image_tokens(image) pads, in order")
        return images

    def _rope_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        grid: torch.Tensor | None) -> torch.Tensor:
        """Multimodal rotary positions [3, B, T] over each row's real tokens (padding gets 0)."""
        types = (input_ids == self.image_pad_id).int()
        positions, _ = self.model.model.get_rope_index(input_ids, types, image_grid_thw=grid,
                                                       attention_mask=attention_mask)
        return positions

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams, *, cache: PrefixCache | None = None,
                 cache_keys: Sequence[str | None] | None = None,
                 images: ImageRows | None = None) -> list[Generation]:
        """Sample one continuation per prompt (left-padded into one batch); ``images``: per prompt,
        the images whose pad runs it holds, in order. ``cache`` is not used (no prefix cache)."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (start it with the chat template)")
        images = self._check_images(prompts, images)
        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[row, width - len(prompt):] = 1
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        vision = self.vision_inputs(images)
        positions = self._rope_positions(input_ids, attention_mask, vision.get("image_grid_thw"))
        next_position = positions.amax(dim=(0, 2)) + 1          # [B]: after each row's last token

        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        stop_ids = set(params.stop_token_ids)
        window = max((len(s.encode()) for s in params.stop_strings), default=0) + 1
        outputs = [Generation(token_ids=[], logprobs=[], raw_logprobs=[]) for _ in prompts]
        done = [False] * batch
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             use_cache=True, logits_to_keep=1, **vision)
            last = out.logits[:, -1, :]
            active = list(range(batch))
            for step in range(params.max_new_tokens):
                tokens = self._take_step(_sample(last.float(), params, generator), active, outputs, done,
                                         stop_ids, params, window)
                if all(done) or step + 1 == params.max_new_tokens:
                    break
                keep = [pos for pos, row in enumerate(active) if not done[row]]
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    out.past_key_values.batch_select_indices(index)
                    attention_mask, next_position = attention_mask[index], next_position[index]
                    tokens = [tokens[pos] for pos in keep]
                    active = [active[pos] for pos in keep]
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
                out = self.model(
                    input_ids=torch.tensor(tokens, device=self.device).unsqueeze(1),
                    attention_mask=attention_mask,
                    position_ids=next_position.view(1, -1, 1).expand(3, -1, 1),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
                last = out.logits[:, -1, :]
                next_position = next_position + 1
        finally:
            self.model.train(was_training)
        return outputs

    # ------------------------------------------------------------------ scoring
    def forward_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        with_grad: bool = False,
        compute_entropy: bool = True,
        positions: torch.Tensor | None = None,
        shared_prefix: bool = False,
        images: ImageRows | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``HFPolicy.forward_logprobs``, with ``images``: per row, the images whose pad runs it
        holds, in order. ``shared_prefix`` is refused (``supports_shared_prefix`` is False: a prefix
        holding images would need its image features cached too)."""
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: score at a positive temperature (1.0 for greedy rollouts)")
        if shared_prefix:
            raise ValueError("VLMPolicy has no shared-prefix forward; the GRPO update asks for one only "
                             "when supports_shared_prefix")
        input_ids = input_ids.to(self.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(self.device)
        images = self._check_images(input_ids, images)
        valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
        if positions is not None:
            if positions.shape != valid.shape:
                raise ValueError(f"positions has shape {tuple(positions.shape)}; expected {tuple(valid.shape)} "
                                 "(one per predicted position: [B, T-1])")
            valid = valid & positions.to(self.device).bool()
        vision = self.vision_inputs(images)
        grad_mode: AbstractContextManager[Any] = torch.enable_grad() if with_grad else torch.no_grad()
        with grad_mode:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False,
                      "position_ids": self._rope_positions(input_ids, attention_mask, vision.get("image_grid_thw")),
                      **vision}
            targets = input_ids[:, 1:]
            if positions is None:
                logits = self.model(**kwargs).logits[:, :-1].float()
            else:   # the hidden states, then the output layer on the wanted positions only
                hidden = self.model.model(**kwargs).last_hidden_state[:, :-1][valid]
                logits = self.model.get_output_embeddings()(hidden).float()
                targets = targets[valid]
            return scored_logprobs(logits, targets, valid, temperature=temperature,
                                   compute_entropy=compute_entropy, picked_only=positions is not None)
