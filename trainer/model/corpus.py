"""The tokenizer's training corpus: the committed ``data/corpus/corpus.txt`` (what goes in:
data/corpus/README.md; ``python -m envs.tokenizer_corpus`` rebuilds it from the repo's data with
the real tools), and the policy's chat template rendered without a tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.utils.chat_template_utils import render_jinja_template

from trainer.model.chat_template import CHAT_TEMPLATE

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS_DIR = REPO_ROOT / "data" / "corpus"
DEFAULT_CORPUS_FILE = DEFAULT_CORPUS_DIR / "corpus.txt"


def render_chat(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = False
) -> str:
    """Render messages with the policy's chat template, without needing a tokenizer."""
    rendered = render_jinja_template(
        conversations=[messages],
        tools=list(tools) if tools is not None else None,  # type: ignore[arg-type]
        chat_template=CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
    )
    return str(rendered[0][0])


def read_corpus(path: Path | None = None) -> str:
    """Corpus text from a file, or the ``*.txt`` files of a folder in name order (no path: the
    committed ``data/corpus/corpus.txt``)."""
    if path is None:
        if not DEFAULT_CORPUS_FILE.exists():
            raise FileNotFoundError(f"{DEFAULT_CORPUS_FILE} is missing; rebuild it with "
                                    "`python -m envs.tokenizer_corpus`")
        return DEFAULT_CORPUS_FILE.read_text(encoding="utf-8")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no *.txt files in the corpus folder {path}")
        return "\n".join(f.read_text(encoding="utf-8") for f in files)
    return path.read_text(encoding="utf-8")
