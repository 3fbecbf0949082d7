"""Writers: records (plain mappings with instruction, input, output, messages, system) to files.

Each writer streams: one record is encoded and written at a time, and returns how many it wrote.
Re-reading a file with the matching reader gives back the same records (see docs/formats.md for
the few conversation shapes alpaca cannot carry).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from app.pipeline.formats.converters import user_content

# ensure_ascii=False: Chinese datasets stay readable and a third smaller.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode
_SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


def to_messages(rec: Mapping[str, Any]) -> list[dict[str, str]]:
    """The record as a chat: [system?, user, assistant] for a single turn, or its conversation."""
    system = rec.get("system")
    out: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    messages = rec.get("messages")
    if messages:
        out.extend({"role": m["role"], "content": m["content"]} for m in messages)
        return out
    out.append({"role": "user", "content": user_content(rec["instruction"], rec.get("input") or "")})
    out.append({"role": "assistant", "content": rec["output"]})
    return out


def _pairs(messages: Iterable[Mapping[str, str]]) -> list[list[str]]:
    """[user, assistant] pairs; consecutive turns of one side are joined by a blank line.

    A system message after the first turn has no place in alpaca and is kept on the user side.
    """
    pairs: list[list[str]] = []
    for msg in messages:
        side = 1 if msg["role"] == "assistant" else 0
        if not pairs or (side == 0 and pairs[-1][1]):
            pairs.append(["", ""])
        current = pairs[-1]
        current[side] = f"{current[side]}\n\n{msg['content']}" if current[side] else msg["content"]
    return pairs


def to_alpaca(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Alpaca shape; a conversation becomes its last exchange plus LLaMA-Factory's `history`."""
    system = rec.get("system")
    messages = rec.get("messages")
    if messages:
        if not system and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        *history, (instruction, output) = _pairs(messages) or [["", ""]]
        out: dict[str, Any] = {"instruction": instruction, "input": "", "output": output}
    else:
        history = []
        out = {"instruction": rec["instruction"], "input": rec.get("input") or "", "output": rec["output"]}
    if system:
        out["system"] = system
    if history:
        out["history"] = history
    return out


def to_sharegpt(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "conversations": [
            {"from": _SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in to_messages(rec)
        ]
    }


def to_openai(rec: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI chat fine-tuning's line, which is also TRL's conversational `messages` column."""
    return {"messages": to_messages(rec)}


def to_axolotl(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Axolotl's `chat_template` rows with `field_messages: conversations` (role/content turns)."""
    return {"conversations": to_messages(rec)}


def to_dpo(rec: Mapping[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference row: the prompt turns, then the chosen and the rejected reply.

    `rec` is a record as it was frozen (its last assistant turn is the chosen reply) plus `rejected`, the
    reply it had before a person edited it.
    """
    turns = to_messages(rec)
    last = max(i for i, m in enumerate(turns) if m["role"] == "assistant")
    return {
        "prompt": turns[:last],
        "chosen": [turns[last]],
        "rejected": [{"role": "assistant", "content": rec["rejected"]}],
    }


def to_dpo_plain(rec: Mapping[str, Any]) -> dict[str, Any]:
    """TRL's standard (plain text) preference row: `prompt`, `chosen`, `rejected` strings, plus `system` when
    the record has one. Plain text cannot carry a conversation: a multi-turn record is a ValueError (use
    `dpo`, the messages form)."""
    turns = to_messages(rec)
    system = [m["content"] for m in turns if m["role"] == "system"]
    chat = [m for m in turns if m["role"] != "system"]
    if len(chat) != 2 or chat[0]["role"] != "user" or chat[1]["role"] != "assistant":
        raise ValueError("a conversation has no plain-text prompt: export it in the messages form (dpo)")
    row = {"prompt": chat[0]["content"], "chosen": chat[1]["content"], "rejected": rec["rejected"]}
    if system:
        row["system"] = "\n\n".join(system)
    return row


def _write_array(items: Iterable[dict[str, Any]], fp: TextIO) -> int:
    count = 0
    for item in items:
        fp.write(",\n" if count else "[\n")
        fp.write(_ENCODE(item))
        count += 1
    fp.write("\n]\n" if count else "[]\n")
    return count


def _write_lines(items: Iterable[dict[str, Any]], fp: TextIO) -> int:
    count = 0
    for item in items:
        fp.write(_ENCODE(item))
        fp.write("\n")
        count += 1
    return count


def write_alpaca(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """A JSON array of {instruction, input, output[, system][, history]}."""
    return _write_array(map(to_alpaca, records), fp)


def write_alpaca_jsonl(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """The alpaca objects of write_alpaca, one per line."""
    return _write_lines(map(to_alpaca, records), fp)


def write_sharegpt(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """A JSON array of {"conversations": [{"from": system|human|gpt, "value": ...}]}."""
    return _write_array(map(to_sharegpt, records), fp)


def write_openai_jsonl(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """OpenAI chat fine-tuning JSONL: {"messages": [{"role", "content"}]} per line."""
    return _write_lines(map(to_openai, records), fp)


def write_axolotl_jsonl(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """{"conversations": [{"role", "content"}]} per line: see to_axolotl."""
    return _write_lines(map(to_axolotl, records), fp)


def write_dpo_jsonl(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """{"prompt", "chosen", "rejected"} per line, each a list of messages: see to_dpo."""
    return _write_lines(map(to_dpo, records), fp)


def write_dpo_plain_jsonl(records: Iterable[Mapping[str, Any]], fp: TextIO) -> int:
    """{"prompt", "chosen", "rejected"} strings per line: see to_dpo_plain."""
    return _write_lines(map(to_dpo_plain, records), fp)


# name -> (writer, file extension); EXPORT_MEDIA_TYPES maps the extension to a Content-Type.
EXPORTERS: dict[str, tuple[Callable[[Iterable[Mapping[str, Any]], TextIO], int], str]] = {
    "alpaca": (write_alpaca, "json"),
    "alpaca_jsonl": (write_alpaca_jsonl, "jsonl"),
    "sharegpt": (write_sharegpt, "json"),
    "openai": (write_openai_jsonl, "jsonl"),
    "axolotl": (write_axolotl_jsonl, "jsonl"),
}
# Preference pairs are not records: their rows need the `rejected` reply (see to_dpo).
PAIR_EXPORTERS: dict[str, tuple[Callable[[Iterable[Mapping[str, Any]], TextIO], int], str]] = {
    "dpo": (write_dpo_jsonl, "jsonl"),
    "dpo_plain": (write_dpo_plain_jsonl, "jsonl"),
}
ALL_EXPORTERS = {**EXPORTERS, **PAIR_EXPORTERS}
# name -> the one row of a record, as the writers above write it and the Parquet export stores it.
ROWS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "alpaca": to_alpaca,
    "alpaca_jsonl": to_alpaca,
    "sharegpt": to_sharegpt,
    "openai": to_openai,
    "axolotl": to_axolotl,
    "dpo": to_dpo,
    "dpo_plain": to_dpo_plain,
}
EXPORT_MEDIA_TYPES = {"json": "application/json", "jsonl": "application/jsonl"}
