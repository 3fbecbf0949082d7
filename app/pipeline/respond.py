"""Candidate responses: a teacher answers a prompt (a conversation up to its final assistant turn) as it is,
once per requested sample; the job stores each answer as a candidate of its record.

Each call is independent of the others (one prompt, one sample), so they go through the shared batch loop
(``llm.run_in_batches``) like the judge, rewrite and reasoning pipelines, and a Batch API mode can answer
them the same way. Samples of one prompt differ by ``sample_index`` (part of the cached request, so each
sample is its own cache entry) and, when the sampler has a seed, by the ``seed`` the request carries.

A teacher's answer is untrusted: an empty answer is no candidate (``empty``); one cut off by the token
limit is kept but marked (``truncated``), since a preference pair may well want it as the rejected side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from app.pipeline.llm import Gateway, Sampling, TeacherError, TeacherUnavailable, run_in_batches

Status = Literal["answered", "truncated", "empty", "teacher_error"]


@dataclass(frozen=True)
class RespondItem:
    key: str  # the record's key, "rec:<id>"
    messages: tuple[tuple[str, str], ...]  # (role, content), ending with the user's turn
    sample_index: int = 0


@dataclass(frozen=True)
class RespondResult:
    key: str
    sample_index: int
    text: str
    status: Status
    prompt_hash: str | None
    tokens_out: int = 0
    finish_reason: str | None = None
    error: str = ""


class RespondParams(BaseModel):
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.8, max_tokens=1024))
    system_prompt: str | None = Field(
        None, description="Sent before each prompt that has no system turn of its own."
    )
    batch_size: int = Field(16, ge=1)


@dataclass(frozen=True)
class RespondSummary:
    counts: dict[str, int]
    stop_reason: Literal["done", "stopped", "budget"]
    message: str = ""


def to_messages(item: RespondItem, *, params: RespondParams) -> list[dict[str, str]]:
    """The request's messages: the prompt's turns, with the sampler's system prompt where it has none."""
    messages = [{"role": role, "content": content} for role, content in item.messages]
    if params.system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": params.system_prompt})
    return messages


def prompt_text(item: RespondItem) -> str:
    """The prompt as one text (for a completions-API teacher, estimates and the rank judge)."""
    if len(item.messages) == 1:
        return item.messages[0][1]
    return "\n\n".join(f"{role}: {content}" for role, content in item.messages)


async def respond_one(gateway: Gateway, item: RespondItem, *, params: RespondParams) -> RespondResult:
    try:
        done = await gateway.complete(
            to_messages(item, params=params),
            purpose="respond",
            sampling=params.sampling,
            sample_index=item.sample_index,
        )
    except TeacherUnavailable:
        raise
    except TeacherError as exc:
        return RespondResult(item.key, item.sample_index, "", "teacher_error", None, error=str(exc)[:500])
    text = done.text.strip()
    status: Status = "empty" if not text else "truncated" if done.finish_reason == "length" else "answered"
    return RespondResult(
        item.key, item.sample_index, text, status, done.key, done.tokens_out, done.finish_reason
    )


async def run_respond(
    *,
    gateway: Gateway,
    items: Sequence[RespondItem],
    params: RespondParams,
    emit: Callable[[list[RespondResult]], None],
    should_stop: Callable[[], bool] = lambda: False,
) -> RespondSummary:
    """Answer every item, emitting results batch by batch in item order."""
    counts: Counter[str] = Counter()

    def tally(results: list[RespondResult]) -> None:
        counts.update(r.status for r in results)
        emit(results)

    stop, message = await run_in_batches(
        items,
        lambda item: respond_one(gateway, item, params=params),
        batch_size=params.batch_size,
        emit=tally,
        should_stop=should_stop,
    )
    return RespondSummary(dict(counts), stop, message)


def item_from_row(key: str, row: dict[str, object], sample_index: int = 0) -> RespondItem | None:
    """A prompt file's row as an item: OpenAI ``messages`` (a final assistant turn is the answer, left
    out), MT-Bench ``turns`` (the first), or Alpaca ``instruction`` with its ``input`` (and ``system``).
    None when the row has no prompt."""
    messages = row.get("messages")
    turns: list[tuple[str, str]] = []
    if isinstance(messages, list):
        turns = [
            (str(m.get("role", "")), str(m.get("content", "")))
            for m in messages
            if isinstance(m, dict) and str(m.get("content", "")).strip()
        ]
        if turns and turns[-1][0] == "assistant":
            turns = turns[:-1]
    elif isinstance(row.get("turns"), list) and row["turns"]:
        turns = [("user", str(row["turns"][0]))]  # type: ignore[index]
    else:
        instruction = str(row.get("instruction") or "").strip()
        extra = str(row.get("input") or "").strip()
        if instruction:
            system = str(row.get("system") or "").strip()
            turns = [("system", system)] if system else []
            turns.append(("user", f"{instruction}\n\n{extra}" if extra else instruction))
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        return None
    return RespondItem(key=key, messages=tuple(turns), sample_index=sample_index)
