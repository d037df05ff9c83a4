"""The chat template's tool turn, derived once by rendering a conversation and taking differences.

The engine never re-tokenizes what the policy produced; it tokenizes only the strings it adds
itself: what the template puts after an assistant message's content (``assistant_end``, e.g.
``"<|im_end|>\\n"``), and around a tool message's content up to the next generation prompt
(``tool_prefix`` / ``tool_suffix``). When the template itself wraps tool content in
``<tool_response>\\n…\\n</tool_response>`` (Qwen2.5), that wrapping is taken out of the prefix and
suffix, because ``format_observation`` adds it for each result (joined by newlines, as Qwen renders
consecutive tool messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.parsing import TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN

_ASSISTANT_SENTINEL = "QQassistantQQ"
_TOOL_SENTINEL = "QQtoolQQ"


@dataclass(frozen=True)
class ToolTurnTemplate:
    """Strings the engine appends between generations (all tokenized with the special tokens)."""

    assistant_end: str   # after an assistant message's content, e.g. "<|im_end|>\n"
    tool_prefix: str     # before the observation, e.g. "<|im_start|>user\n"
    tool_suffix: str     # after it, up to the next generation, e.g. "<|im_end|>\n<|im_start|>assistant\n"

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> ToolTurnTemplate:
        """Render [user, assistant] and [user, assistant, tool] + generation prompt; diff them."""
        base: list[dict[str, Any]] = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": _ASSISTANT_SENTINEL},
        ]
        kwargs: dict[str, Any] = {"tokenize": False}
        if tools:
            kwargs["tools"] = tools
        first = str(tokenizer.apply_chat_template(base, add_generation_prompt=False, **kwargs))
        second = str(tokenizer.apply_chat_template(
            [*base, {"role": "tool", "content": _TOOL_SENTINEL}], add_generation_prompt=True, **kwargs
        ))
        if not second.startswith(first) or _ASSISTANT_SENTINEL not in first or _TOOL_SENTINEL not in second:
            raise ValueError(
                "the chat template does not render a tool turn as an extension of the conversation; "
                "the rollout engine needs one that appends tool messages after the assistant turn"
            )
        assistant_end = first[first.rindex(_ASSISTANT_SENTINEL) + len(_ASSISTANT_SENTINEL):]
        tool_part = second[len(first):]
        tool_prefix, tool_suffix = tool_part.split(_TOOL_SENTINEL, 1)
        open_, close = f"{TOOL_RESPONSE_OPEN}\n", f"\n{TOOL_RESPONSE_CLOSE}"
        if tool_prefix.endswith(open_) and tool_suffix.startswith(close):
            tool_prefix, tool_suffix = tool_prefix[: -len(open_)], tool_suffix[len(close):]
        return cls(assistant_end=assistant_end, tool_prefix=tool_prefix, tool_suffix=tool_suffix)
