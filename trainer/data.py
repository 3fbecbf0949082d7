"""Reading a snapshot export into conversations, with every dropped record counted.

Every export format the service writes for SFT is read here (app/pipeline/formats/writers.py; the round trip
is tested in tests/trainer/test_trainer_gaps.py): alpaca and alpaca_jsonl (`system`, and LLaMA-Factory's
`history` of earlier [instruction, response] pairs), openai (`messages`), sharegpt (`conversations` with
`from`/`value`) and axolotl (`conversations` with `role`/`content`). A top-level `system` is the system
message of any of them that has none. What is not SFT data is refused as a whole file, never read as
something else: preference rows (the `dpo` export), Parquet, and files with no record in a known shape.
"""

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


class UnreadableDataset(ValueError):
    """The file is not SFT data the trainer can read (a preference export, Parquet, an unknown shape)."""


PREFERENCE_KEYS = frozenset({"chosen", "rejected"})


def _read_records(path: Path) -> list[Any]:
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        raise UnreadableDataset(
            f"{path}: is a Parquet file; the trainer reads JSON or JSON Lines "
            "(export the snapshot as alpaca, alpaca_jsonl, sharegpt, openai or axolotl)"
        )
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


def _from_messages(raw: Any) -> list[Message] | None:
    """role/content turns (openai, axolotl) or from/value turns (sharegpt), told apart per turn."""
    if not isinstance(raw, list) or not raw:
        return None
    out: list[Message] = []
    for m in raw:
        if not isinstance(m, dict):
            return None
        key_role, key_content = ("role", "content") if "role" in m else ("from", "value")
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
    if record.keys() >= PREFERENCE_KEYS:
        return None, "preference_pair", "dpo"
    if "messages" in record:
        conv = _from_messages(record["messages"])
        fmt = "messages"
    elif "conversations" in record:
        conv = _from_messages(record["conversations"])
        fmt = "sharegpt"
    elif "instruction" in record:
        conv = _from_alpaca(record)
        fmt = "alpaca"
    else:
        return None, "invalid_record", "unknown"
    if conv is None:
        return None, "invalid_record", fmt
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        return None, "invalid_record", fmt
    if system and system.strip() and not any(m["role"] == "system" for m in conv):
        conv = [{"role": "system", "content": system}, *conv]
    assistants = [m for m in conv if m["role"] == "assistant"]
    if not assistants:
        return None, "no_assistant_turn", fmt
    if any(not m["content"].strip() for m in assistants):
        return None, "empty_response", fmt
    first = 1 if conv[0]["role"] == "system" else 0
    if conv[first]["role"] == "assistant":
        # a conversation that opens with the model has no prompt to condition on
        conv = conv[:first] + conv[first + 1 :]
        if not any(m["role"] == "assistant" for m in conv):
            return None, "no_assistant_turn", fmt
    return conv, None, fmt


def _from_alpaca(record: dict[str, Any]) -> list[Message] | None:
    """[earlier turns from `history`...] user (instruction, input apart) and assistant (output or response)."""
    instruction = record.get("instruction")
    output = record.get("output", record.get("response"))
    inp = record.get("input") or ""
    history = record.get("history") or []
    if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(inp, str):
        return None
    if not isinstance(history, list):
        return None
    conv: list[Message] = []
    for pair in history:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(text, str) for text in pair)
        ):
            return None
        conv += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user: Message = {"role": "user", "content": instruction}
    if inp.strip():
        user["input"] = inp
    return [*conv, user, {"role": "assistant", "content": output}]


def load_dataset(path: str | Path) -> LoadedData:
    """Detect the format per record; invalid, empty and response-less records are counted, not fatal.

    Raises UnreadableDataset for a file that is not SFT data: preference rows, Parquet, or no record in any
    known shape (a format the trainer does not know would otherwise train on nothing, or on the wrong text).
    """
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
    if formats["dpo"]:
        raise UnreadableDataset(
            f"{path}: {formats['dpo']} record(s) are preference pairs (prompt/chosen/rejected, the dpo export), "
            "not SFT conversations; train them with a preference objective or export the snapshot for SFT"
        )
    if records and not conversations and formats["unknown"] == sum(formats.values()):
        keys = sorted({k for r in records if isinstance(r, dict) for k in r} - {"_invalid_line"})[:8]
        raise UnreadableDataset(
            f"{path}: no record is alpaca (instruction/output), messages, sharegpt or axolotl "
            f"(conversations); keys found: {keys}"
        )
    single_turn = all(sum(m["role"] == "assistant" for m in c) == 1 for c in conversations)
    source = formats.most_common(1)[0][0] if formats else "alpaca"
    return LoadedData(
        conversations=conversations, single_turn=single_turn, dropped=dropped, source_format=source
    )
