"""Per-format mapping of one decoded JSON object to a ParsedRecord.

Converters see an object that already passed the generic checks (depth, field size, surrogates);
they only check shape and types, and raise Invalid with the field path on the first problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.pipeline.formats.model import Limits, ParsedRecord

_MISSING: Any = object()


class Invalid(Exception):
    """One record's problem; the reader turns it into a BadLine with the line it knows."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, as users see it in their file."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _required_str(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        raise Invalid(path, "required field is missing")
    raise Invalid(path, f"expected string, got {type_name(value)}")


def _optional_str(obj: dict[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None or type(value) is str:
        return value
    raise Invalid(path, f"expected string, got {type_name(value)}")


def _required_list(obj: dict[str, Any], key: str, limits: Limits, what: str) -> list[Any]:
    value = obj.get(key, _MISSING)
    if type(value) is not list:
        if value is _MISSING:
            raise Invalid(key, "required field is missing")
        raise Invalid(key, f"expected array, got {type_name(value)}")
    if not value:
        raise Invalid(key, f"expected at least one {what}")
    if len(value) > limits.max_turns:
        raise Invalid(key, f"{len(value):,} {what}s exceeds the limit of {limits.max_turns:,}")
    return value


def _extra(obj: dict[str, Any], used: frozenset[str]) -> dict[str, Any]:
    if obj.keys() <= used:
        return {}
    return {k: v for k, v in obj.items() if k not in used}


def conversation(
    msgs: list[dict[str, str]],
    system: str | None,
    extra: dict[str, Any],
    line: int,
    field: str,
) -> ParsedRecord:
    """Normalise a conversation: leading system turn to `system`, one exchange to a plain record.

    A single user→assistant exchange is stored without `messages`, exactly like an alpaca record,
    so dedup, rules and review treat it the same whatever file it came from. Longer conversations
    keep `messages`; `instruction`/`output` then hold the first user turn and the reply to it,
    which is what dedup and quality rules look at.
    """
    if system is None and msgs and msgs[0]["role"] == "system":
        system = msgs[0]["content"]
        msgs = msgs[1:]
    if not system:
        system = None
    if len(msgs) == 2 and msgs[0]["role"] == "user" and msgs[1]["role"] == "assistant":
        return ParsedRecord(msgs[0]["content"], "", msgs[1]["content"], None, system, None, None, extra, line)
    if not msgs:
        raise Invalid(field, "expected at least one user or assistant message besides the system prompt")
    instruction = output = ""
    for i, msg in enumerate(msgs):
        if msg["role"] == "user":
            instruction = msg["content"]
            output = next((m["content"] for m in msgs[i + 1 :] if m["role"] == "assistant"), "")
            break
    return ParsedRecord(instruction, "", output, msgs, system, None, None, extra, line)


def user_content(instruction: str, input_: str) -> str:
    """How an alpaca (instruction, input) pair reads as one user message, as the Alpaca template does."""
    return f"{instruction}\n\n{input_}" if input_ else instruction


# ---------------------------------------------------------------------------------------------- alpaca

_ALPACA_OUTPUT = frozenset({"instruction", "input", "output", "system", "history"})
_ALPACA_RESPONSE = frozenset({"instruction", "input", "response", "system", "history"})


_ALPACA_PLAIN = frozenset({"instruction", "input", "output"})


def _alpaca(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    # Fast path for the common plain record; anything unusual takes the checked path below.
    instruction = obj.get("instruction")
    input_ = obj.get("input", "")
    output = obj.get("output")
    if (
        type(instruction) is str
        and type(input_) is str
        and type(output) is str
        and obj.keys() <= _ALPACA_PLAIN
    ):
        return ParsedRecord(instruction, input_, output, None, None, None, None, {}, line)
    return _alpaca_checked(obj, line, limits)


def _alpaca_checked(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    instruction = _required_str(obj, "instruction", "instruction")
    input_ = _optional_str(obj, "input", "input") or ""
    # GPTeacher and Code Alpaca write `response`; when both exist `output` wins and `response` is kept.
    if "output" in obj or "response" not in obj:
        output = _required_str(obj, "output", "output")
        used = _ALPACA_OUTPUT
    else:
        output = _required_str(obj, "response", "response")
        used = _ALPACA_RESPONSE
    system = _optional_str(obj, "system", "system") or None
    extra = _extra(obj, used)
    history = obj.get("history")
    if not history:
        if history is not None and type(history) is not list:
            raise Invalid("history", f"expected array, got {type_name(history)}")
        return ParsedRecord(instruction, input_, output, None, system, None, None, extra, line)
    msgs = _history(history, limits)
    msgs.append({"role": "user", "content": user_content(instruction, input_)})
    msgs.append({"role": "assistant", "content": output})
    return conversation(msgs, system, extra, line, "history")


def _history(history: Any, limits: Limits) -> list[dict[str, str]]:
    """LLaMA-Factory's alpaca `history`: earlier [user, assistant] pairs before this turn."""
    if type(history) is not list:
        raise Invalid("history", f"expected array, got {type_name(history)}")
    if len(history) * 2 > limits.max_turns:
        raise Invalid("history", f"{len(history) * 2:,} messages exceeds the limit of {limits.max_turns:,}")
    msgs: list[dict[str, str]] = []
    for i, pair in enumerate(history):
        if type(pair) is not list or len(pair) != 2:
            raise Invalid(f"history[{i}]", "expected a [user, assistant] pair of strings")
        for j, role in enumerate(("user", "assistant")):
            if type(pair[j]) is not str:
                raise Invalid(f"history[{i}][{j}]", f"expected string, got {type_name(pair[j])}")
            msgs.append({"role": role, "content": pair[j]})
    return msgs


# -------------------------------------------------------------------------------------------- sharegpt

# Role names seen in ShareGPT-style dumps; anything else (tools, observations) is refused rather
# than silently turned into a user or assistant turn.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "claude": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "ai": "assistant",
    "system": "system",
}
_SHAREGPT_USED = frozenset({"conversations", "system"})


def _sharegpt(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    turns = _required_list(obj, "conversations", limits, "message")
    msgs: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        path = f"conversations[{i}]"
        if type(turn) is not dict:
            raise Invalid(path, f"expected object, got {type_name(turn)}")
        # Some converters write role/content inside `conversations`; accept both spellings.
        who_key, value_key = (
            ("from", "value") if "from" in turn or "role" not in turn else ("role", "content")
        )
        who = _required_str(turn, who_key, f"{path}.{who_key}")
        value = _required_str(turn, value_key, f"{path}.{value_key}")
        role = SHAREGPT_ROLES.get(who) or SHAREGPT_ROLES.get(who.lower())
        if role is None:
            known = ", ".join(SHAREGPT_ROLES)
            raise Invalid(f"{path}.{who_key}", f'unknown role "{who}" (expected one of: {known})')
        msgs.append({"role": role, "content": value})
    system = _optional_str(obj, "system", "system")
    return conversation(msgs, system, _extra(obj, _SHAREGPT_USED), line, "conversations")


# ---------------------------------------------------------------------------------------------- openai

_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_OPENAI_USED = frozenset({"messages"})


def _openai_content(value: Any, path: str) -> str:
    if type(value) is str:
        return value
    if type(value) is list:
        # The content-parts form: only text parts can become a training record.
        texts = []
        for i, part in enumerate(value):
            if type(part) is not dict or part.get("type") != "text" or type(part.get("text")) is not str:
                raise Invalid(f"{path}[{i}]", 'expected a {"type": "text", "text": string} part')
            texts.append(part["text"])
        return "".join(texts)
    if value is _MISSING:
        raise Invalid(path, "required field is missing")
    raise Invalid(path, f"expected string, got {type_name(value)}")


def _openai(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    turns = _required_list(obj, "messages", limits, "message")
    msgs: list[dict[str, str]] = []
    for i, turn in enumerate(turns):
        path = f"messages[{i}]"
        if type(turn) is not dict:
            raise Invalid(path, f"expected object, got {type_name(turn)}")
        who = _required_str(turn, "role", f"{path}.role")
        role = _OPENAI_ROLES.get(who)
        if role is None:
            known = ", ".join(_OPENAI_ROLES)
            raise Invalid(f"{path}.role", f'unknown role "{who}" (expected one of: {known})')
        content = _openai_content(turn.get("content", _MISSING), f"{path}.content")
        msgs.append({"role": role, "content": content})
    return conversation(msgs, None, _extra(obj, _OPENAI_USED), line, "messages")


# ----------------------------------------------------------------------------------------------- dolly

_DOLLY_USED = frozenset({"instruction", "context", "response", "category"})


def _dolly(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    instruction = _required_str(obj, "instruction", "instruction")
    context = _optional_str(obj, "context", "context") or ""
    response = _required_str(obj, "response", "response")
    category = _optional_str(obj, "category", "category")
    return ParsedRecord(
        instruction, context, response, None, None, category, None, _extra(obj, _DOLLY_USED), line
    )


# --------------------------------------------------------------------------------------- self-instruct

_SELF_INSTRUCT_USED = frozenset({"instruction", "instances", "is_classification"})


def _self_instruct(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    instruction = _required_str(obj, "instruction", "instruction")
    instances = _required_list(obj, "instances", limits, "instance")
    for i, instance in enumerate(instances):
        path = f"instances[{i}]"
        if type(instance) is not dict:
            raise Invalid(path, f"expected object, got {type_name(instance)}")
        _optional_str(instance, "input", f"{path}.input")
        _required_str(instance, "output", f"{path}.output")
    is_classification = obj.get("is_classification")
    if is_classification is not None and type(is_classification) is not bool:
        raise Invalid("is_classification", f"expected boolean, got {type_name(is_classification)}")
    extra = _extra(obj, _SELF_INSTRUCT_USED)
    if len(instances) > 1:
        extra["instances"] = instances[1:]
    first = instances[0]
    return ParsedRecord(
        instruction,
        first.get("input") or "",
        first["output"],
        None,
        None,
        None,
        is_classification,
        extra,
        line,
    )


# ------------------------------------------------------------------------------------- evaluation sets

_MT_BENCH_USED = frozenset({"turns", "category"})


def _mt_bench(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    """An MT-Bench question (FastChat's `question.jsonl`): the first turn is the prompt, the category its
    label; the later turns, the question id and any reference answers stay in the record's meta."""
    turns = _required_list(obj, "turns", limits, "turn")
    for i, turn in enumerate(turns):
        if type(turn) is not str:
            raise Invalid(f"turns[{i}]", f"expected string, got {type_name(turn)}")
    reference = obj.get("reference")
    if reference is not None and (type(reference) is not list or any(type(r) is not str for r in reference)):
        raise Invalid("reference", f"expected array of strings, got {type_name(reference)}")
    category = _optional_str(obj, "category", "category")
    extra = _extra(obj, _MT_BENCH_USED)
    if len(turns) > 1:
        extra["turns"] = turns
    output = reference[0] if reference else ""
    return ParsedRecord(turns[0], "", output, None, None, category, None, extra, line)


_BELLE_EVAL_USED = frozenset({"question", "std_answer", "class"})


def _belle_eval(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    """A BELLE eval-set question: the question is the prompt, the standard answer its reference output
    (empty where there is none), the class its label."""
    question = _required_str(obj, "question", "question")
    answer = _optional_str(obj, "std_answer", "std_answer") or ""
    label = _optional_str(obj, "class", "class")
    return ParsedRecord(question, "", answer, None, None, label, None, _extra(obj, _BELLE_EVAL_USED), line)


_PROMPTS_USED = frozenset({"instruction", "input", "system", "instruction_type", "category"})


def _prompts(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    """A prompt without an answer (InstructionWild, prompts people typed, questions to answer): the output
    stays empty for a `respond` job or a person to write. `instruction_type` or `category` is the label.

    A record that does carry an answer is refused rather than read without it: the file was detected as
    prompts from its first record, and mixing the two shapes is more likely a mistake than a plan."""
    instruction = _required_str(obj, "instruction", "instruction")
    for key in ("output", "response"):
        if key in obj:
            raise Invalid(
                key, "this file imports as prompts without answers; import a file with answers as alpaca"
            )
    input_ = _optional_str(obj, "input", "input") or ""
    system = _optional_str(obj, "system", "system") or None
    label = _optional_str(obj, "instruction_type", "instruction_type") or _optional_str(
        obj, "category", "category"
    )
    return ParsedRecord(instruction, input_, "", None, system, label, None, _extra(obj, _PROMPTS_USED), line)


Converter = Callable[[dict[str, Any], int, Limits], ParsedRecord]

CONVERTERS: dict[str, Converter] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
    "dolly": _dolly,
    "self_instruct": _self_instruct,
    "mt_bench": _mt_bench,
    "belle_eval": _belle_eval,
    "prompts": _prompts,
}
