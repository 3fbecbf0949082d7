"""What a record of a prompt set asks and what its reference answer is. Pure: the job and the CLI share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SetPrompt:
    prompt_id: str
    record_id: int | None
    text: str
    """What the judge and decontamination read: the user's turns."""
    messages: list[dict[str, str]]
    """What the systems answer: the conversation up to (not including) its last assistant turn."""
    category: str | None
    reference: str | None


def set_prompt(prompt_id: str, record: dict[str, Any], *, record_id: int | None = None) -> SetPrompt | None:
    """The prompt of a record (alpaca fields or messages); None for a record with nothing to ask."""
    system = str(record.get("system") or "").strip()
    raw = record.get("messages")
    messages: list[dict[str, str]] = []
    reference: str | None = None
    if isinstance(raw, list) and raw and not record.get("instruction"):
        turns = [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
            for m in raw
            if isinstance(m, dict)
        ]
        if turns and turns[-1]["role"] == "assistant":
            reference = turns[-1]["content"] or None
            turns = turns[:-1]
        messages = turns
    else:
        instruction = str(record.get("instruction") or "").strip()
        extra = str(record.get("input") or "").strip()
        content = f"{instruction}\n\n{extra}".strip() if extra else instruction
        if content:
            messages = [{"role": "user", "content": content}]
        output = str(record.get("output") or "").strip()
        reference = output or None
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    text = "\n\n".join(m["content"] for m in messages if m["role"] == "user").strip()
    if not text:
        return None
    label = record.get("label")
    return SetPrompt(
        prompt_id=prompt_id,
        record_id=record_id,
        text=text,
        messages=messages,
        category=str(label) if label not in (None, "") else None,
        reference=reference,
    )
