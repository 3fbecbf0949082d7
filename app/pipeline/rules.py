"""Heuristic quality rules. Each rule has a code, a description, parameters and a language scope; a
rejected record keeps every rule it broke with the detail (see docs/curation.md).

The rules run at two moments: on a bare generated instruction (``output=None``, before it has instances),
and on a whole record (the rules job, the CLI, a generated instance). Self-Instruct's instruction filters
(length, "Write a program") are about generated instructions, so the parts of them that human data breaks
for good reasons (a 400-word prompt that carries its passage, a seed task that asks for a program) apply
only to bare instructions. Every default rule's false-positive rate on human-written data is measured
and pinned by tests/pipeline/test_rules_false_positives.py."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field

from app.pipeline.langid import (
    LANGUAGE_NAMES,
    LATIN_LANGUAGES,
    Guess,
    asks_to_translate,
    identify,
    named_languages,
    prose,
    script_letters,
)


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
    generation_only: bool = False  # runs on bare generated instructions (output=None) only


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
    # "Solve this equation." is a whole task when its input holds the equation (3 human seeds are so).
    if n < lo and not t.input.strip():
        return f"instruction has {n} {unit}, fewer than {lo}"
    # The cap is Self-Instruct's, for generated instructions; a record's instruction may carry its own
    # passage (T0 prompts, BELLE questions, chat turns), so records are not capped.
    if n > hi and t.output is None:
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


# Verbs that, opening a request, ask for the thing they act on: "Create a flowchart of...".
REQUEST_VERBS_EN = [
    "create", "generate", "make", "design", "produce", "render", "build", "show", "provide", "give",
    "send", "share", "attach", "insert", "add", "record", "take", "play", "draw", "paint", "sketch",
    "upload", "download", "display", "output", "return", "embed", "film", "photograph",
]  # fmt: skip
# Verbs that are themselves a non-text action when they open a request: "Draw a cat.", "Go to ...".
# ("Paint costs $2 a quart" opens a GSM8K sentence, so "paint" is a request verb only: "Paint a picture".)
ACTION_VERBS_EN = ["draw", "plot", "go to", "graph", "film", "photograph", "upload", "download"]
REQUEST_VERBS_ZH = [
    "画", "生成", "制作", "创建", "设计", "提供", "给我", "发送", "发给", "上传", "下载", "录制", "拍摄",
    "播放", "附上", "插入", "做一", "做个", "展示", "绘",
]  # fmt: skip

_TOKEN = re.compile(r"\w+")
_LIST_ITEM = re.compile(r"\s*(?:\d+[.)、]|[-*•])\s")
_CLAUSE = re.compile(r"[.!?;:。！？；：\n]+")
_CLAUSE_ZH = re.compile(r"[.!?;:。！？；：，,、\n]+")
# Words that may stand before a request's verb: "Please draw...", "Can you create...", "Now go to...".
_OPENERS = re.compile(
    r"^(?:(?:please|kindly|now|then|and|also|first|next|finally|so|ok|okay|just)\s+"
    r"|(?:can|could|would|will)\s+you\s+(?:please\s+)?|i\s+(?:want|need|would\s+like)\s+you\s+to\s+"
    r"|i'd\s+like\s+you\s+to\s+|help\s+me\s+|let's\s+|you\s+(?:should|must|need\s+to)\s+)+"
)
# What ends the object of a request verb: "Give a summary of the plot" asks for a summary.
_OBJECT_END = frozenset(
    ["of", "about", "for", "on", "in", "to", "that", "which", "who", "with", "from", "by", "using", "based",
     "as", "at", "into", "showing", "describing", "explaining", "where", "when", "while", "if"]
)  # fmt: skip
# A Chinese request opens its clause with a polite or directive word, or with its verb.
_ZH_REQUEST_START = (
    "请",
    "帮",
    "给",
    "麻烦",
    "为",
    "替",
    "用",
    "你",
    "能否",
    "能不能",
    "可以帮",
    "试着",
    "尝试",
)
# ... and one that asks how, or tells of someone, does not itself ask for a drawing.
_ZH_NOT_REQUEST = re.compile(r"如何|怎么|怎样|什么|为什么|吗|哪|我想|我要|我在|他|她|它")


# An instruction that points at a picture, a chart or a recording it does not have ("Classify the bird in
# the photo", "Analyze the data in the given chart", "对照片中的鸟进行分类") cannot be done by a text model
# either. Files and music are not here: a file's text or a song's lyrics can be the input.
POINTED_EN = [
    "photo", "photos", "photograph", "picture", "pictures", "image", "images", "video", "videos", "audio",
    "recording", "chart", "graph", "graphs", "diagram", "flowchart", "map", "drawing", "illustration",
    "screenshot",
]  # fmt: skip
POINTED_ZH = ["照片", "图片", "图像", "视频", "音频", "图表", "流程图", "示意图", "地图", "录音", "截图"]
_POINTER_EN = re.compile(
    r"\b(?:this|these|the\s+(?:given|following|attached|provided|above|below|shown|accompanying|enclosed))"
    r"\s+(?:\w+\s+)?(\w+)"
)
# "the bird in the photo" (but not "The Picture of Dorian Gray"), in the request's first sentence.
_IN_THE_EN = re.compile(
    r"\bin\s+the\s+(photo|photograph|picture|image|video|chart|graph|diagram)\b(?!\s+of\b)"
)
_POINTERS_ZH = ("给定的", "给定", "以下", "下面的", "下列", "这张", "这幅", "这个", "这段", "所附", "附上的", "提供的", "上面的")  # fmt: skip


def _points_at(text: str, p: dict[str, Any]) -> str | None:
    lower = text.lower()
    pointed = set(p["pointed"])
    for pointer in _POINTER_EN.finditer(lower):
        if pointer.group(1) in pointed:
            return pointer.group(1)
    first = _CLAUSE.split(lower.strip(), maxsplit=1)[0]
    if (inside := _IN_THE_EN.search(first)) and inside.group(1) in pointed:
        return inside.group(1)
    first_zh = _CLAUSE_ZH.split(text.strip(), maxsplit=1)[0]
    for word in p["pointed_zh"]:
        at = text.find(word)
        while at >= 0:
            if text[:at].endswith(_POINTERS_ZH):
                return str(word)
            at = text.find(word, at + 1)
        if f"{word}中" in first_zh:  # "确定照片中生物的学名"
            return str(word)
    return None


@lru_cache(maxsize=16)
def _blacklist_terms(
    words: tuple[str, ...], actions: tuple[str, ...], verbs: tuple[str, ...]
) -> tuple[frozenset[str], tuple[tuple[str, list[str]], ...], frozenset[str]]:
    """The blacklist's parameters lowered and the actions tokenized once per configuration, not once per
    clause of every instruction (that was most of this rule's cost)."""
    lowered = {w.lower() for w in actions}  # a set, as before: the same action is reported first
    return (
        frozenset(w.lower() for w in words),
        tuple((a, _TOKEN.findall(a)) for a in lowered),
        frozenset(w.lower() for w in verbs),
    )


def _blacklist(t: Text, p: dict[str, Any]) -> str | None:
    """Self-Instruct's keyword filter, made to look at what the instruction asks for. The reference drops
    any instruction containing "file", "map" or "go to"; that removes 2.5 % of GSM8K's human-written
    problems ("She goes to the music shop...") and seed-like tasks that mention a video. Here a word counts
    when it is the verb a request opens with ("Draw...", "Please go to..."), the object of a request verb
    ("Create a flowchart of...", "Can you generate an image..."), or an input the instruction points at
    and does not have ("the given chart", "this photo", "in the picture", "照片中")."""
    words, actions, verbs = _blacklist_terms(tuple(p["words"]), tuple(p["actions"]), tuple(p["verbs"]))
    # Items of a list below the request ("1. Draw the Lewis structure for water...") are what the prompt
    # is about, not what it asks for.
    lines = t.instruction.lower().splitlines() or [""]
    request = "\n".join(lines[:1] + [line for line in lines[1:] if not _LIST_ITEM.match(line)])
    for clause in _CLAUSE.split(request):
        clause = _OPENERS.sub("", clause.strip())
        tokens = _TOKEN.findall(clause)
        if not tokens:
            continue
        for action, parts in actions:
            # "Plot:" alone is a field of a form; "Plot the sales" asks for a plot.
            if tokens[: len(parts)] == parts and len(tokens) > len(parts):
                return f"asks for non-text output: {action!r}"
        if tokens[0] in verbs:
            for token in tokens[1:6]:
                if token in _OBJECT_END:
                    break
                if token in words:
                    return f"asks for non-text output: {token!r}"
    if pointed := _points_at(t.instruction, p):
        return f"refers to non-text input: {pointed!r}"
    zh_words, zh_verbs = p["words_zh"], p["verbs_zh"]
    for clause in _CLAUSE_ZH.split(t.instruction):
        clause = clause.strip()
        if not clause.startswith((*_ZH_REQUEST_START, *zh_verbs)):
            continue
        for word in zh_words:
            at = clause.find(word)
            if at < 0 or _ZH_NOT_REQUEST.search(clause[:at]) or clause[at + len(word) :].startswith("的"):
                continue  # "适合制作音乐的软件": the request is for the software
            before = clause[max(0, at - p["window_zh"]) : at]
            if any(word.startswith(v) or v in before for v in zh_verbs):
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


_LABEL = re.compile(r"[^:：\n]{0,24}$")


def _ends_with_colon(t: Text, p: dict[str, Any]) -> str | None:
    """Self-Instruct's instance filter (prepare_for_finetuning.py, filter_invalid_instances): an input or
    output ending with ':' is usually a cut-off generation. An instruction ending with ':' is not: it
    introduces its input ("Summarize this email into a single sentence:"). Nor is an input that is a form
    or an analogy whose last field the output fills ("Atheism:\nIslam:", "Instability : Turmoil :: Change :"):
    a short label after other ':' fields."""
    for name, value in (("input", t.input), ("output", t.output)):
        if value is None:
            continue
        text = value.rstrip()
        if not text.endswith((":", "：")):
            continue
        body = text[:-1]
        if name == "input" and re.search(r"[:：]", body) and _LABEL.fullmatch(re.split(r"[:：\n]", body)[-1]):
            continue
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
    asked = t.instruction.lower()
    for phrase in p["phrases"]:
        # "Describe the day of an AI voice assistant" is answered "As an AI voice assistant, ...".
        if phrase.lower() in lower and phrase.lower() not in asked:
            return f"refusal or AI disclaimer: {phrase!r}"
    return None


def _clear(guess: Guess, p: dict[str, Any]) -> bool:
    return (
        guess.language != "unknown"
        and guess.confidence >= p["min_confidence"]
        and guess.letters >= p["min_chars"]
    )


def _language_mismatch(t: Text, p: dict[str, Any]) -> str | None:
    """The answer is clearly in another language than the instruction, and nothing asked for that: the
    instruction does not name the answer's language ("Translate ... into Chinese", "用英文回答"), is not a
    translation task, and the input is not in that language (a Chinese instruction to correct an English
    sentence is answered in English). Code, math, tables and numbers are in no language (langid.prose)."""
    if t.output is None:
        return None
    # The instruction first: its guess is usually cached (each of a task's instances, dataset_language),
    # and when it is not clear the answer, the costlier text, need not be read at all.
    asked = identify(t.instruction)
    if not _clear(asked, p):
        return None
    answered = identify(t.output)
    if not _clear(answered, p) or asked.language == answered.language:
        return None
    named = named_languages(t.instruction)
    if answered.language in named or (not named and asks_to_translate(t.instruction)):
        return None
    if t.input.strip() and identify(t.input).language == answered.language:
        return None
    if _term_list(t.output):  # "- Risotto\n- Spaghetti alla Carbonara": names, not the answer's language
        return None
    return f"instruction is {asked.language}, answer is {answered.language}"


_ITEM_MARK = re.compile(r"^\s*(?:[-*•·]|\d+[.)、]|[a-zA-Z][.)])\s*")


def _term_list(text: str) -> bool:
    """Whether a text is a list of short Latin-script items (names, terms): lines, or one line split at
    commas. (A Chinese answer's script is evidence enough, list or not.)"""
    if _CJK.search(text):
        return False
    lines = [line for line in text.splitlines() if line.strip()]
    items = lines if len(lines) > 1 else re.split(r"[,，、;；]", text)
    items = [_ITEM_MARK.sub("", item).strip() for item in items if item.strip()]
    return len(items) > 1 and all(len(item.split()) <= 4 and len(item) <= 40 for item in items)


_DECLARED = frozenset(LANGUAGE_NAMES) | frozenset(LATIN_LANGUAGES)


def _dataset_language(t: Text, p: dict[str, Any]) -> str | None:
    """The instruction is clearly in another language than the dataset's declared one: an English
    instruction in a Chinese dataset. A Chinese instruction that quotes English text has Chinese
    characters and is kept; so is a task that names the other language ("Translate 'merci' into ...")."""
    if t.language not in _DECLARED:  # "mul", "und", ...: no language to hold records to
        return None
    guess = identify(t.instruction)
    if guess.language == t.language or not _clear(guess, p):
        return None
    if script_letters(t.instruction, t.language) >= p["min_own_script"]:
        return None
    if guess.language in named_languages(t.instruction):
        return None
    return f"instruction is {guess.language}, dataset is {t.language}"


def _repetition(t: Text, p: dict[str, Any]) -> str | None:
    """Share of the output's n-grams that repeat an earlier one: a degenerate loop ("The answer is yes."
    thirty times) scores above 0.9; human-written text stays under 0.45, GSM8K's step-by-step solutions
    included. (Counting every occurrence of a repeated n-gram instead scored them up to 0.67, and a
    Chinese legal text 0.70.) An output that is mostly code, a table or notation is not measured (less
    than half of its letters are prose, langid.prose): a regular expression or an ABC tune repeats by
    nature."""
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
    distinct = len(set(zip(*(units[i:] for i in range(n)), strict=False)))  # the n-grams, without slicing
    share = 1 - distinct / total
    if share <= p["max_share"]:
        return None
    # Only now whether it is prose: both must hold, and prose() is most of this rule's cost.
    letters = sum(c.isalpha() for c in t.output)
    if not letters or sum(c.isalpha() for c in prose(t.output)) < letters / 2:
        return None
    return f"{share:.0%} of the output's {n}-grams repeat an earlier one (max {p['max_share']:.0%})"


# "[Your Name]" under a letter is how people write templates (3 human seed tasks end so), not a slot left
# unfilled by a generator, so it is not here.
PLACEHOLDERS = ["<noinput>", "<nooutput>", "[insert", "xxx", "<insert", "lorem ipsum"]
# An input is given material: an e-mail in it may hide a name as "XXX" (2 seed tasks); only the markers
# a generator leaves count there.
INPUT_PLACEHOLDERS = ["<noinput>", "<nooutput>", "[insert", "<insert"]


def _placeholder(t: Text, p: dict[str, Any]) -> str | None:
    for name, value, placeholders in (
        ("instruction", t.instruction, p["placeholders"]),
        ("input", t.input, p["input_placeholders"]),
        ("output", t.output, p["placeholders"]),
    ):
        if not value:
            continue
        lower = value.lower()
        for ph in placeholders:
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
            "Instruction length: words for Latin text, characters for CJK (Self-Instruct keeps 4–150 words). "
            "A short instruction with an input passes; the cap applies to generated instructions only.",
            {"min_words": 4, "max_words": 150, "min_chars": 4, "max_chars": 300},
            None,
            _length,
        ),
        Rule(
            "blacklist",
            "Asks for output a text model cannot give (images, files, audio, diagrams...), or points at such an "
            "input it does not have: 'Draw...', 'Go to...', 'Create a flowchart', 'the bird in the photo'.",
            {
                "words": BLACKLIST_EN,
                "words_zh": BLACKLIST_ZH,
                "actions": ACTION_VERBS_EN,
                "verbs": REQUEST_VERBS_EN,
                "verbs_zh": REQUEST_VERBS_ZH,
                "window_zh": 6,
                "pointed": POINTED_EN,
                "pointed_zh": POINTED_ZH,
            },
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
            "Generated instruction opens with 'Write a program' (Self-Instruct's filter for a GPT-3 habit; "
            "generated instructions only, human tasks may ask for a program).",
            {"openings": ["Write a program", "编写一个程序", "写一个程序"]},
            None,
            _write_a_program,
            generation_only=True,
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
            "Input or output ends with ':' (cut off; Self-Instruct's instance filter). An instruction may.",
            {},
            None,
            _ends_with_colon,
            needs_output=True,
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
            "The answer is clearly in another language than the instruction, and the task did not ask for "
            "it (translation, a named language, an input in that language). Code and math are neutral.",
            {"min_chars": 12, "min_confidence": 0.9},
            None,
            _language_mismatch,
            needs_output=True,
        ),
        Rule(
            "dataset_language",
            "The instruction is clearly in another language than the dataset's declared language.",
            {"min_chars": 12, "min_confidence": 0.9, "min_own_script": 2},
            None,
            _dataset_language,
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
            "Placeholders left in the text: <noinput>, '[insert', 'XXX'... (in the input: generator markers only).",
            {"placeholders": PLACEHOLDERS, "input_placeholders": INPUT_PLACEHOLDERS},
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
        if rule.generation_only and output is not None:
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
