"""Response rewriting: the teacher improves an existing answer towards a goal (a preset or the curator's
own instruction); the job stores each rewrite as a revision of its record.

A teacher's reply is untrusted: preambles ("Sure! Here is the rewritten response:"), a wrapping code
fence around the whole reply and echoed section headers are removed; an empty reply, a refusal or one
identical to the original is no rewrite (``status`` says which), never stored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from app.pipeline.llm import (
    Gateway,
    Sampling,
    TeacherError,
    TeacherUnavailable,
    run_in_batches,
)
from app.pipeline.prompts import render_prompt
from app.pipeline.textnorm import normalize

# Goal presets: what each asks of the teacher, in the prompt's language.
PRESETS: dict[str, dict[str, str]] = {
    "complete": {
        "en": "make the response more complete: cover what the instruction asks that it leaves out, "
        "with correct detail, without padding.",
        "zh": "让回答更完整：补上指令要求而回答遗漏的内容，细节准确，不要凑字数。",
    },
    "format": {
        "en": "format the response better: clear structure, paragraphs or lists where they help, "
        "Markdown for code and tables.",
        "zh": "改进回答的格式：结构清晰，需要时使用段落或列表，代码和表格使用 Markdown。",
    },
    "concise": {
        "en": "make the response concise: keep every needed point, remove repetition and filler.",
        "zh": "让回答更简洁：保留所有必要的要点，去掉重复和空话。",
    },
    "friendly": {
        "en": "give the response a warm, friendly and encouraging tone.",
        "zh": "让回答的语气温暖、友好、鼓励人。",
    },
    "formal": {
        "en": "give the response a formal, professional tone.",
        "zh": "让回答的语气正式、专业。",
    },
    "translate": {
        "en": "translate the response into $target_language, keeping its meaning and formatting.",
        "zh": "把回答翻译成$target_language，保持含义和格式不变。",
    },
}
Preset = Literal["complete", "format", "concise", "friendly", "formal", "translate", "custom"]


@dataclass(frozen=True)
class RewriteItem:
    key: str
    instruction: str
    input: str
    output: str


@dataclass(frozen=True)
class RewriteResult:
    key: str
    text: str  # the cleaned rewrite ("" when there is none)
    status: Literal["rewritten", "unchanged", "empty", "refused", "teacher_error"]
    raw: str
    prompt_hash: str | None


class RewriteParams(BaseModel):
    preset: Preset = "complete"
    instruction: str | None = Field(None, description="The curator's own goal (preset 'custom', or added).")
    target_language: str | None = None
    language: Literal["en", "zh"] = "en"
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.3, max_tokens=2048))
    batch_size: int = Field(32, ge=1)


@dataclass(frozen=True)
class RewriteSummary:
    counts: dict[str, int]
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


def goal_text(params: RewriteParams) -> str:
    """The goal as the prompt states it: the preset's text, then the curator's instruction."""
    parts: list[str] = []
    if params.preset != "custom":
        preset = PRESETS[params.preset][params.language]
        parts.append(preset.replace("$target_language", params.target_language or "English"))
    if params.instruction and params.instruction.strip():
        parts.append(params.instruction.strip())
    return " ".join(parts)


def rewrite_prompt(item: RewriteItem, *, params: RewriteParams) -> str:
    return render_prompt(
        "rewrite",
        params.language,
        goal=goal_text(params),
        instruction=item.instruction,
        input=item.input or "-",
        output=item.output,
    )


_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok)[!,.]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:the|a|my|an)\s+(?:improved|rewritten|revised|updated|better)?\s*"
    r"(?:version(?: of the response)?|response|answer|rewrite)[^\n:]*:|"
    r"\[?(?:rewritten|revised|improved) (?:response|answer)\]?\s*:?|"
    r"(?:好的[，,!！]?\s*)?(?:以下是|下面是)[^\n：:]*[：:]|\[?改写后的回答\]?\s*[：:]?)\s*",
    re.I,
)
_FENCE = re.compile(r"^```[\w-]*\n(?P<body>.*)\n```$", re.S)
_REFUSAL = re.compile(r"^(?:i'm sorry|i am sorry|sorry, but|i can(?:no|')t help|抱歉|对不起)", re.I)


def clean_rewrite(raw: str) -> str:
    text = raw.strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    fenced = _FENCE.match(text)
    # A fence around the whole reply wraps it; a fence inside it is the answer's own code block.
    if fenced and "```" not in fenced.group("body"):
        text = fenced.group("body").strip()
    return text


def classify(raw: str, original: str) -> tuple[str, Literal["rewritten", "unchanged", "empty", "refused"]]:
    text = clean_rewrite(raw)
    if not text:
        return "", "empty"
    if _REFUSAL.match(text) and not _REFUSAL.match(original.strip()):
        return "", "refused"
    if normalize(text) == normalize(original):
        return "", "unchanged"
    return text, "rewritten"


async def rewrite_one(gateway: Gateway, item: RewriteItem, *, params: RewriteParams) -> RewriteResult:
    try:
        done = await gateway.complete(
            rewrite_prompt(item, params=params), purpose="rewrite", sampling=params.sampling
        )
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return RewriteResult(item.key, "", "teacher_error", str(exc)[:500], None)
    text, status = classify(done.text, item.output)
    return RewriteResult(item.key, text, status, done.text, done.key)


async def run_rewrite(
    *,
    gateway: Gateway,
    items: Sequence[RewriteItem],
    params: RewriteParams,
    emit: Callable[[list[RewriteResult]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> RewriteSummary:
    """Rewrite every item, emitting results batch by batch in item order."""
    counts: Counter[str] = Counter()

    def tally(results: list[RewriteResult]) -> None:
        counts.update(r.status for r in results)
        emit(results)

    stop, message = await run_in_batches(
        items,
        lambda item: rewrite_one(gateway, item, params=params),
        batch_size=params.batch_size,
        emit=tally,
        should_stop=should_stop,
    )
    return RewriteSummary(dict(counts), stop, message)
