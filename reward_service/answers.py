"""Reading a final answer out of a policy's text, shared by the reward families (ssl, viper) that
parse structured answers; the rule rewards' tag helpers are in ``reward_service/rewards/_text.py``."""

from __future__ import annotations


def answer_block(text: str, tag: str = "answer", trim: str = " \t\r\n") -> tuple[str | None, str]:
    """The content of the last closed ``<tag>…</tag>`` block (from the last closing tag back to the
    opening one before it), else the whole text, stripped of ``trim``; ``(None, why)`` for a closing
    tag without an opening one, an opening tag never closed, or an empty answer."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    close = text.rfind(closing)
    if close >= 0:
        start = text.rfind(opening, 0, close)
        if start < 0:
            return None, f"{closing} without {opening}"
        content = text[start + len(opening) : close]
    elif opening in text:
        return None, f"{opening} is never closed"
    else:
        content = text
    content = content.strip(trim)
    if not content:
        return None, "the answer is empty"
    return content, ""


def shown(text: str, limit: int = 60) -> str:
    """``text`` on one line, cut to ``limit`` characters, quoted: for an explanation."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
