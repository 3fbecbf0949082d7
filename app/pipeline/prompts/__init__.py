"""Prompt templates as files: ``prompts/<language>/<name>.txt``, with ``$placeholders`` (string.Template).

``$`` placeholders rather than ``{}`` so templates can show JSON to the teacher without escaping.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from string import Template

LANGUAGES = ("en", "zh")
_ROOT = Path(__file__).resolve().parent


@lru_cache(maxsize=128)
def load_prompt(name: str, language: str = "en") -> Template:
    """The template ``name`` in ``language``; raises ``ValueError`` for an unknown language or name."""
    if language not in LANGUAGES:
        raise ValueError(f"no prompt templates for language {language!r} (have: {', '.join(LANGUAGES)})")
    path = _ROOT / language / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"no prompt template {name!r} for language {language!r}")
    return Template(path.read_text(encoding="utf-8"))


def render_prompt(name: str, language: str = "en", **values: object) -> str:
    """The template filled in; a missing placeholder is an error, not a silent ``$name`` in the prompt."""
    return load_prompt(name, language).substitute({k: str(v) for k, v in values.items()}).strip() + "\n"
