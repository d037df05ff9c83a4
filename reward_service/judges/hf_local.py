"""A judge that is a local Hugging Face causal LM (any checkpoint directory that
``AutoModelForCausalLM`` and ``AutoTokenizer`` load, e.g. Qwen2.5-7B-Instruct).

The model is loaded on first use, in a worker thread; generation runs in a worker thread
too, one at a time (``asyncio.Lock``), so the event loop keeps serving other rewards.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from reward_service.judges.base import ChatMessages
from reward_service.types import RewardInputError, RewardSystemError

logger = logging.getLogger(__name__)


def plain_prompt(messages: ChatMessages) -> str:
    """The prompt for a tokenizer without a chat template: role-labelled paragraphs,
    ending with the cue for the assistant's turn."""
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    parts.append("Assistant:")
    return "\n\n".join(parts)


class HFLocalJudge:
    """Generates with a local causal LM; greedy unless a temperature > 0 is asked for.

    Args:
        model_dir: a directory written by ``save_pretrained`` (model and tokenizer).
        device: a torch device string; ``None`` picks CUDA when available, else the CPU.
    """

    def __init__(self, model_dir: str | Path, *, device: str | None = None) -> None:
        self.model_dir = Path(model_dir)
        self._device = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        self._generate_lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._model is not None

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            if not self.model_dir.is_dir():
                raise RewardSystemError(f"judge checkpoint {self.model_dir} is not a directory")
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                tokenizer: Any = AutoTokenizer.from_pretrained(self.model_dir)
                model: Any = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype="auto")
            except (OSError, ValueError) as exc:
                raise RewardSystemError(f"cannot load the judge checkpoint {self.model_dir}: {exc}") from exc
            model.to(device)
            model.eval()
            self._tokenizer, self._model = tokenizer, model
            logger.info("loaded judge %s on %s (%d parameters)", self.model_dir, device, model.num_parameters())

    def render_prompt(self, messages: ChatMessages) -> str:
        """The text the model is given: the tokenizer's chat template with the generation
        prompt when it has one, else ``plain_prompt``."""
        self._load()
        if getattr(self._tokenizer, "chat_template", None):
            text = self._tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
            return str(text)
        return plain_prompt(messages)

    def _generate(self, messages: ChatMessages, max_new_tokens: int, temperature: float) -> str:
        import torch

        self._load()
        tokenizer, model = self._tokenizer, self._model
        prompt = self.render_prompt(messages)
        # The chat template already holds any BOS token; plain prompts get the tokenizer's own.
        add_special = not getattr(tokenizer, "chat_template", None)
        encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special)
        input_ids = encoded["input_ids"].to(model.device)
        attention_mask = encoded["attention_mask"].to(model.device)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] + max_new_tokens > limit:
            raise RewardInputError(
                f"the judge prompt has {input_ids.shape[1]} tokens; with max_new_tokens={max_new_tokens} it "
                f"exceeds the judge's context of {limit} tokens"
            )
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature}
        else:
            # Greedy: clear sampling knobs a checkpoint's generation_config may set.
            sampling.update(temperature=None, top_p=None, top_k=None)
        try:
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=eos,
                    pad_token_id=pad,
                    **sampling,
                )
        except RuntimeError as exc:  # out of memory, a device error: the judge failed, not the policy
            raise RewardSystemError(f"judge {self.model_dir} failed to generate: {exc}") from exc
        new_tokens = output[0, input_ids.shape[1]:]
        return str(tokenizer.decode(new_tokens, skip_special_tokens=True))

    async def complete(self, messages: ChatMessages, max_new_tokens: int, temperature: float = 0.0) -> str:
        """Generate the judge's reply in a worker thread, one generation at a time."""
        async with self._generate_lock:
            return await asyncio.to_thread(self._generate, messages, max_new_tokens, temperature)

    async def aclose(self) -> None:
        """Drop the weights (the memory is freed once nothing else holds them)."""
        async with self._generate_lock:
            self._model = None
            self._tokenizer = None
