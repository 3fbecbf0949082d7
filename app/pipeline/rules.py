"""Heuristic quality rules. Each rule has a code, a description, parameters and a language scope; a
rejected record keeps every rule it broke with the detail (see docs/curation.md)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from app.pipeline.langid import detect_language


@dataclass(frozen=True)
class RuleHit:
    code: str
    detail: str


@dataclass(frozen=True)
class Text:
    instruction: str
    input: str
    output: str | None  # None: instruction-only check (during generation, before instances exist)
    language: str


Check = Callable[[Text, dict[str, Any]], str | None]


@dataclass(frozen=True)
class Rule:
    code: str
    description: str
    params: dict[str, Any]
    languages: frozenset[str] | None  # None: every language
    check: Check = field(repr=False)
    needs_output: bool = False


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_WORDS = re.compile(r"\w+", re.UNICODE)


def _is_cjk_text(text: str) -> bool:
    if text.isascii():
        return False
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and len(_CJK.findall(text)) / len(chars) > 0.2


def _length(t: Text, p: dict[str, Any]) -> str | None:
    text = t.instruction.strip()
    if _is_cjk_text(text):
        n = len(_CJK.findall(text)) + len(re.findall(r"[A-Za-z0-9]+", text))
        lo, hi, unit = p["min_chars"], p["max_chars"], "characters"
    else:
        n = len(text.split())
        lo, hi, unit = p["min_words"], p["max_words"], "words"
    if n < lo:
        return f"instruction has {n} {unit}, fewer than {lo}"
    if n > hi:
        return f"instruction has {n} {unit}, more than {hi}"
    return None


BLACKLIST_EN = [
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
]
BLACKLIST_ZH = [
    "图片",
    "图像",
    "照片",
    "画一",
    "画出",
    "绘制",
    "绘图",
    "视频",
    "音频",
    "音乐",
    "流程图",
    "示意图",
    "地图",
    "文件",
    "图表",
    "录音",
]


_TOKEN = re.compile(r"\w+")


def _blacklist(t: Text, p: dict[str, Any]) -> str | None:
    text = t.instruction
    lower = text.lower()
    tokens = set(_TOKEN.findall(lower))
    for word in p["words"]:
        # A one-token word stands alone exactly when it is one of the text's \w+ runs; others ("go to")
        # are searched as whole words, and only when their first token is there at all.
        parts = _TOKEN.findall(word)
        if len(parts) == 1 and parts[0] == word:
            if word in tokens:
                return f"asks for non-text output: {word!r}"
        elif (not parts or parts[0] in tokens) and re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", lower):
            return f"asks for non-text output: {word!r}"
    for word in p["words_zh"]:
        if word in text:
            return f"asks for non-text output: {word!r}"
    return None


def _starts_with_punctuation(t: Text, p: dict[str, Any]) -> str | None:
    text = t.instruction.lstrip()
    if text and unicodedata.category(text[0]).startswith("P") and text[0] not in p["allowed"]:
        return f"instruction starts with {text[0]!r}"
    return None


def _write_a_program(t: Text, p: dict[str, Any]) -> str | None:
    text = t.instruction.strip().lower()
    for opening in p["openings"]:
        if text.startswith(opening.lower()):
            return f"instruction opens with {opening!r}"
    return None


def _non_ascii_start(t: Text, p: dict[str, Any]) -> str | None:
    text = t.instruction.lstrip()
    if text and not text[0].isascii():
        return f"first character {text[0]!r} is not ASCII"
    return None


def _empty_output(t: Text, p: dict[str, Any]) -> str | None:
    return "output is empty" if t.output is not None and not t.output.strip() else None


def _input_equals_output(t: Text, p: dict[str, Any]) -> str | None:
    if t.output is not None and t.input.strip() and t.input.strip() == t.output.strip():
        return "input and output are the same"
    return None


def _ends_with_colon(t: Text, p: dict[str, Any]) -> str | None:
    for name, value in (("instruction", t.instruction), ("output", t.output)):
        if value is not None and value.rstrip().endswith((":", "：")):
            return f"{name} ends with ':'"
    return None


REFUSALS = [
    "as an ai language model",
    "as an ai model",
    "as a language model",
    "i'm sorry, but",
    "i am sorry, but",
    "i'm sorry, i cannot",
    "i cannot fulfill",
    "i can't assist with",
    "as an ai assistant",
    "作为一个ai",
    "作为一个人工智能",
    "作为ai语言模型",
    "作为一名ai",
    "我很抱歉，但",
    "抱歉，我无法",
    "我无法提供",
]


def _refusal(t: Text, p: dict[str, Any]) -> str | None:
    if t.output is None:
        return None
    lower = t.output.lower()
    for phrase in p["phrases"]:
        if phrase.lower() in lower:
            return f"refusal or AI disclaimer: {phrase!r}"
    return None


def _language_mismatch(t: Text, p: dict[str, Any]) -> str | None:
    if (
        t.output is None
        or len(t.output.strip()) < p["min_chars"]
        or len(t.instruction.strip()) < p["min_chars"]
    ):
        return None
    asked = detect_language(f"{t.instruction} {t.input}" if _is_cjk_text(t.instruction) else t.instruction)
    answered = detect_language(t.output)
    if "unknown" in (asked, answered) or asked == answered:
        return None
    return f"instruction is {asked}, answer is {answered}"


def _repetition(t: Text, p: dict[str, Any]) -> str | None:
    if t.output is None:
        return None
    if _is_cjk_text(t.output):
        units = [c for c in t.output if not c.isspace()]
        n = p["n_chars"]
    else:
        units = _WORDS.findall(t.output.lower())
        n = p["n_words"]
    total = len(units) - n + 1
    if total < p["min_ngrams"]:
        return None
    counts = Counter(zip(*(units[i:] for i in range(n)), strict=False))  # the n-grams, without slicing
    repeated = sum(c for c in counts.values() if c > 1)
    share = repeated / total
    if share > p["max_share"]:
        return f"{share:.0%} of the output's {n}-grams repeat (max {p['max_share']:.0%})"
    return None


PLACEHOLDERS = ["<noinput>", "<nooutput>", "[insert", "xxx", "<insert", "[your name]", "lorem ipsum"]


def _placeholder(t: Text, p: dict[str, Any]) -> str | None:
    for name, value in (("instruction", t.instruction), ("input", t.input), ("output", t.output)):
        if not value:
            continue
        lower = value.lower()
        for ph in p["placeholders"]:
            if ph not in lower:  # cheap, and necessary for either form below
                continue
            if not ph.isalpha() or re.search(rf"(?<![a-z]){re.escape(ph)}(?![a-z])", lower):
                return f"{name} holds the placeholder {ph!r}"
    return None


RULES: dict[str, Rule] = {
    r.code: r
    for r in (
        Rule(
            "instruction_length",
            "Instruction length: words for Latin text, characters for CJK (Self-Instruct keeps 4–150 words).",
            {"min_words": 4, "max_words": 150, "min_chars": 4, "max_chars": 300},
            None,
            _length,
        ),
        Rule(
            "blacklist",
            "Asks for output a text model cannot give (images, files, audio, diagrams...); whole "
            "words for Latin text.",
            {"words": BLACKLIST_EN, "words_zh": BLACKLIST_ZH},
            None,
            _blacklist,
        ),
        Rule(
            "starts_with_punctuation",
            "Instruction starts with punctuation.",
            {"allowed": ['"', "'", "(", "¿", "¡", "“", "「", "《"]},
            None,
            _starts_with_punctuation,
        ),
        Rule(
            "write_a_program",
            "Instruction opens with 'Write a program' (hard to verify by a text model).",
            {"openings": ["Write a program", "编写一个程序", "写一个程序"]},
            None,
            _write_a_program,
        ),
        Rule(
            "non_ascii_start",
            "Instruction starts with a non-ASCII character (English datasets only).",
            {},
            frozenset({"en"}),
            _non_ascii_start,
        ),
        Rule("empty_output", "The output is empty.", {}, None, _empty_output, needs_output=True),
        Rule(
            "input_equals_output",
            "Input and output are the same text.",
            {},
            None,
            _input_equals_output,
            needs_output=True,
        ),
        Rule(
            "ends_with_colon",
            "Instruction or output ends with ':' (cut off, or waiting for more).",
            {},
            None,
            _ends_with_colon,
        ),
        Rule(
            "refusal",
            "Refusals and AI disclaimers ('As an AI language model', 'I'm sorry, but', '作为一个AI').",
            {"phrases": REFUSALS},
            None,
            _refusal,
            needs_output=True,
        ),
        Rule(
            "language_mismatch",
            "The answer is in another language than the instruction.",
            {"min_chars": 8},
            None,
            _language_mismatch,
            needs_output=True,
        ),
        Rule(
            "ngram_repetition",
            "Heavy n-gram repetition in the output (a degenerate generation).",
            {"n_words": 3, "n_chars": 5, "min_ngrams": 20, "max_share": 0.5},
            None,
            _repetition,
            needs_output=True,
        ),
        Rule(
            "placeholder",
            "Placeholders left in the text: <noinput>, '[insert', 'XXX'...",
            {"placeholders": PLACEHOLDERS},
            None,
            _placeholder,
        ),
    )
}


class RuleConfig(BaseModel):
    """Which rules run and with which parameters (per dataset: `Dataset.settings["rules"]`)."""

    enabled: list[str] | None = Field(None, description="Rule codes to run; None runs every rule.")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Overrides per rule code.")


def evaluate(
    *,
    instruction: str,
    input: str = "",
    output: str | None = None,
    language: str = "en",
    config: RuleConfig | None = None,
) -> list[RuleHit]:
    """Every rule the record breaks, in registry order. `output=None` runs only instruction rules."""
    config = config or RuleConfig()
    codes = config.enabled if config.enabled else list(RULES)
    unknown = [c for c in codes if c not in RULES]
    if unknown:
        raise ValueError(f"unknown rule codes: {', '.join(unknown)}; known: {', '.join(RULES)}")
    lang = language.split("-")[0].lower()
    text = Text(instruction=instruction, input=input or "", output=output, language=lang)
    hits = []
    for code in codes:
        rule = RULES[code]
        if rule.languages is not None and lang not in rule.languages:
            continue
        if rule.needs_output and output is None:
            continue
        detail = rule.check(text, {**rule.params, **config.params.get(code, {})})
        if detail:
            hits.append(RuleHit(code, detail))
    return hits


def funnel(hits_per_record: Iterable[list[RuleHit]]) -> dict[str, int]:
    """How many records each rule removed; a record counts once, for the first rule it broke."""
    removed: Counter[str] = Counter()
    for hits in hits_per_record:
        if hits:
            removed[hits[0].code] += 1
    return {code: removed[code] for code in RULES if removed[code]}
