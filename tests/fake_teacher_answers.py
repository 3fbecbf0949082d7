"""The fake teacher's answers to rewrite and reasoning prompts (tests/fake_teacher.py dispatches here).

Rewrites come as real teachers send them: often behind a preamble ("Sure! Here is the improved
response:"), sometimes in a code fence, sometimes the original unchanged. Solutions to GSM8K questions
(looked up in the real data, as a competent model would know them) end in a final answer written in the
varied ways models write one ("The answer is $1,250.00.", "#### 72", "\\boxed{72}", "**Final answer:** 72
clips"), sometimes wrong, sometimes with no final answer at all. A question we do not know gets a made-up
number. All of it is a deterministic function of the prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from functools import lru_cache
from pathlib import Path

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpacadatacleaned" / "gsm_8k_train.json"

REWRITE_CUES = ("Rewrite the response below", "请改写下面的回答")
REASONING_CUES = ("Solve the following problem step by step", "请一步一步地解答下面的问题")


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _section(prompt: str, start: str, end: str | None = None) -> str:
    if start not in prompt:
        return ""
    rest = prompt.split(start, 1)[1]
    if end and end in rest:
        rest = rest.split(end, 1)[0]
    return rest.strip()


def answer_rewrite(prompt: str, lang: str) -> str:
    rng = _rng("rewrite", prompt)
    original = _section(prompt, "[Response to rewrite]" if lang == "en" else "[待改写的回答]")
    extra = (
        "In short: the key points above answer the question completely."
        if lang == "en"
        else "总之，以上要点完整地回答了这个问题。"
    )
    improved = f"{original}\n\n{extra}"
    roll = rng.random()
    if roll < 0.4:
        lead = "Sure! Here is the improved response:" if lang == "en" else "好的，以下是改写后的回答："
        return f"{lead}\n\n{improved}"
    if roll < 0.55:
        return f"```\n{improved}\n```"
    if roll < 0.65:
        return original  # no change at all: the job must not store it as a rewrite
    return improved


@lru_cache(maxsize=1)
def _gsm8k() -> dict[str, float]:
    if not GSM8K.is_file():
        return {}
    answers = {}
    for row in json.loads(GSM8K.read_text(encoding="utf-8")):
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", row["output"])
        if numbers:
            answers[row["instruction"].strip()] = float(numbers[-1].replace(",", "").rstrip("."))
    return answers


def _shown(value: float, style: str) -> str:
    whole = value == int(value)
    if style == "money":
        return f"${value:,.2f}"
    return f"{int(value):,}" if whole else f"{value:g}"


def answer_reasoning(prompt: str, lang: str) -> str:
    rng = _rng("reasoning", prompt)
    question = _section(prompt, "Problem:" if lang == "en" else "问题：")
    known = _gsm8k().get(question.split("\n\n", 1)[0].strip())
    value = known if known is not None else float(rng.randint(2, 500))
    steps = (
        [
            "Let me work through this step by step.",
            "First, I find the quantities the problem gives.",
            "Then I combine them.",
        ]
        if lang == "en"
        else ["我们一步一步来。", "先找出题目给出的数量。", "再把它们组合起来。"]
    )
    roll = rng.random()
    if roll < 0.2:
        steps.append(
            "It depends on how you read the problem, so I can't give one number."
            if lang == "en"
            else "这取决于如何理解题目，无法给出唯一的数。"
        )
        return "\n".join(steps)
    if roll < 0.45:
        value = value + rng.choice([1, 2, 10]) if rng.random() < 0.7 else value * 2
    style = rng.choice(["money", "plain", "hashes", "boxed", "bold"])
    if lang == "zh":
        steps.append(f"答案：{_shown(value, 'plain')}")
    elif style == "money":
        steps.append(f"The answer is {_shown(value, 'money')}.")
    elif style == "hashes":
        steps.append(f"#### {_shown(value, 'plain')}")
    elif style == "boxed":
        steps.append(f"So the result is $\\boxed{{{_shown(value, 'plain')}}}$")
    elif style == "bold":
        steps.append(f"**Final answer:** {_shown(value, 'plain')} in total")
    else:
        steps.append(f"The answer is {_shown(value, 'plain')}")
    return "\n".join(steps)
