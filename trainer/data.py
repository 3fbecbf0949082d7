"""Reading a snapshot export (alpaca or messages) into conversations, with every dropped record counted."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict


class _MessageBase(TypedDict):
    role: str
    content: str


class Message(_MessageBase, total=False):
    # alpaca's "input" stays apart from the instruction so the alpaca format can render its own section;
    # chat formats append it to the user content
    input: str


_ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}


@dataclass
class LoadedData:
    conversations: list[list[Message]]
    single_turn: bool
    dropped: Counter[str] = field(default_factory=Counter)
    source_format: str = "alpaca"


def _read_records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of records")
        return data
    records: list[Any] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # a broken line is one dropped record, not a failed run
            records.append({"_invalid_line": lineno})
    return records


def _from_messages(raw: Any, key_role: str, key_content: str) -> list[Message] | None:
    if not isinstance(raw, list) or not raw:
        return None
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict):
            return None
        role = _ROLE_ALIASES.get(str(m.get(key_role, "")).lower())
        content = m.get(key_content)
        if role is None or not isinstance(content, str):
            return None
        out.append({"role": role, "content": content})
    return out


def record_to_conversation(record: Any) -> tuple[list[Message] | None, str | None, str]:
    """(conversation, drop reason, detected format) for one record."""
    if not isinstance(record, dict):
        return None, "invalid_record", "unknown"
    if "messages" in record:
        conv = _from_messages(record["messages"], "role", "content")
        fmt = "messages"
    elif "conversations" in record:
        conv = _from_messages(record["conversations"], "from", "value")
        fmt = "sharegpt"
    elif "instruction" in record:
        instruction = record.get("instruction")
        output = record.get("output", record.get("response"))
        inp = record.get("input") or ""
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(inp, str):
            return None, "invalid_record", "alpaca"
        user: Message = {"role": "user", "content": instruction}
        if inp.strip():
            user["input"] = inp
        conv = [user, {"role": "assistant", "content": output}]
        fmt = "alpaca"
    else:
        return None, "invalid_record", "unknown"
    if conv is None:
        return None, "invalid_record", fmt
    assistants = [m for m in conv if m["role"] == "assistant"]
    if not assistants:
        return None, "no_assistant_turn", fmt
    if any(not m["content"].strip() for m in assistants):
        return None, "empty_response", fmt
    if conv[0]["role"] == "assistant":
        # a conversation that opens with the model has no prompt to condition on
        conv = conv[1:]
        if not any(m["role"] == "assistant" for m in conv):
            return None, "no_assistant_turn", fmt
    return conv, None, fmt


def load_dataset(path: str | Path) -> LoadedData:
    """Detect alpaca vs messages per record; invalid, empty and response-less records are counted, not fatal."""
    records = _read_records(Path(path))
    conversations: list[list[Message]] = []
    dropped: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    for record in records:
        conv, reason, fmt = record_to_conversation(record)
        formats[fmt] += 1
        if conv is None:
            dropped[reason or "invalid_record"] += 1
            continue
        conversations.append(conv)
    single_turn = all(sum(m["role"] == "assistant" for m in c) == 1 for c in conversations)
    source = formats.most_common(1)[0][0] if formats else "alpaca"
    return LoadedData(
        conversations=conversations, single_turn=single_turn, dropped=dropped, source_format=source
    )
