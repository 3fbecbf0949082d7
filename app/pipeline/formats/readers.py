"""Streaming readers: bytes in, one ParsedRecord or BadLine out per record.

Cost model: the happy path per record is one UTF-8 decode, one C-level JSON decode and a few
`str.count`/`str.find` gates. The expensive checks (exact nesting depth, walking every string for
its length or for lone surrogates) only run when a gate says they could fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from itertools import accumulate, chain
from typing import Any, BinaryIO

from app.pipeline.formats.converters import CONVERTERS, Invalid, type_name
from app.pipeline.formats.model import FORMATS, BadLine, FormatError, Limits, ParsedRecord, Unit
from app.pipeline.formats.preference import PREFERENCE_CONVERTERS

_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_WS = re.compile(r"[ \t\r\n]*")
# What may follow an array item: a comma or the closing bracket, then (after the bracket) only blanks.
_AFTER_ITEM = re.compile(r"[ \t\r\n]*([,\]])[ \t\r\n]*")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}
# What no database column can hold, keys and unknown fields included: lone surrogates (no driver encodes
# them) and NUL (PostgreSQL's text and jsonb refuse it). Both can only come from a \uXXXX escape.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")  # a lone surrogate or NUL only comes as one
_KEY = re.compile(r'"([A-Za-z_]+)"\s*:')
# A JSON Lines file whose first records are all broken is more likely not the format we think.
_DETECT_WINDOW = 100


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# strict=False accepts raw tabs and other control characters inside strings: real dumps contain
# them and the text is kept as is. NaN/Infinity are refused: they are not JSON and no JSON column stores them.
_DECODER = json.JSONDecoder(strict=False, parse_constant=_reject_constant)


# ------------------------------------------------------------------------------------------ detection

_FILENAME_HINTS = (
    ("sharegpt", "sharegpt"),
    ("dolly", "dolly"),
    ("seed_task", "self_instruct"),
    ("self_instruct", "self_instruct"),
    ("self-instruct", "self_instruct"),
    ("openai", "openai"),
    ("alpaca", "alpaca"),
)
_EXPECTED = (
    "alpaca (instruction, output), sharegpt (conversations), openai (messages), "
    "dolly (instruction, response, context, category), self_instruct (instruction, instances), "
    "mt_bench (turns, category), belle_eval (question, std_answer, class), prompts (instruction only), "
    "preference (prompt, chosen, rejected), hh_rlhf (chosen, rejected), ultrafeedback (instruction, completions)"
)
_ALL_CONVERTERS = {**CONVERTERS, **PREFERENCE_CONVERTERS}


def _hint(filename: str | None) -> str | None:
    if not filename:
        return None
    name = os.path.basename(filename).lower()
    return next((fmt for needle, fmt in _FILENAME_HINTS if needle in name), None)


def format_from_keys(
    keys: Iterable[str], filename: str | None = None, *, line: int | None = None, unit: Unit = "line"
) -> str:
    """Pick the format from a record's top-level keys; the filename only breaks ties."""
    keys = set(keys)
    # Preference rows first: UltraFeedback-binarized rows also carry `messages`, UltraFeedback `instruction`.
    if "chosen" in keys and "rejected" in keys:
        return "preference" if "prompt" in keys else "hh_rlhf"
    if "completions" in keys and "instruction" in keys:
        return "ultrafeedback"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai"
    if "instances" in keys:
        return "self_instruct"
    if "turns" in keys and "instruction" not in keys:
        return "mt_bench"
    if "question" in keys and keys & {"std_answer", "class"} and "instruction" not in keys:
        return "belle_eval"
    if "instruction" in keys and not keys & {"output", "response", "context", "history", "input"}:
        return "prompts"  # InstructionWild-style: a prompt and maybe its type, nothing to learn from yet
    if "instruction" in keys:
        # {instruction, response} alone is both GPTeacher-style alpaca and a dolly record without
        # its optional fields; both read it the same way, so the name only changes the label.
        dolly = keys & {"context", "category"} or ("response" in keys and _hint(filename) == "dolly")
        return "dolly" if dolly and not keys & {"output", "input"} else "alpaca"
    hinted = _hint(filename)
    if hinted is not None:
        return hinted
    shown = ", ".join(f'"{k}"' for k in sorted(keys)[:12]) or "none"
    raise FormatError(
        f"unknown format: the first record has keys {shown}; expected {_EXPECTED}", line=line, unit=unit
    )


def detect_format(head: bytes, filename: str | None = None) -> str:
    """Name the format of a file from its first bytes (a few KB is enough) and its name."""
    text = head.removeprefix(_BOM).decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise FormatError("empty file: no records")
    first: Any = None
    try:
        if text[0] == "[":
            first, _ = _DECODER.raw_decode(text, _WS.match(text, 1).end())  # type: ignore[union-attr]
        elif text[0] == "{":
            first, _ = _DECODER.raw_decode(text.split("\n", 1)[0].strip())
    except (ValueError, RecursionError):
        first = None  # cut off inside the first record: fall back to the keys we can see
    if type(first) is dict:
        return format_from_keys(first.keys(), filename, line=1)
    if text[0] not in "[{":
        raise _not_json(text[0])
    return format_from_keys(_KEY.findall(text, 0, 65536), filename)


def _not_json(first_char: str) -> FormatError:
    hint = " (the file must be UTF-8; this looks like UTF-16)" if first_char in "\ufeff\ufffd" else ""
    return FormatError(
        f"not JSON: a file must be a JSON array of records or JSON Lines (one object per line){hint}", line=1
    )


# ------------------------------------------------------------------------------------- generic checks


def _depth(text: str) -> int:
    """Exact nesting depth of a JSON text, without recursion: brackets outside strings."""
    skeleton = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_DELTA.__getitem__, skeleton)), default=0)


def _find_string(value: Any, bad: re.Pattern[str] | int) -> tuple[str, str] | None:
    """First string (key or value) that matches `bad` or is longer than it, with its field path."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if type(item) is str:
            if (len(item) > bad) if isinstance(bad, int) else bad.search(item):
                return path, item
        elif type(item) is dict:
            children = []
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else key
                if (len(key) > bad) if isinstance(bad, int) else bad.search(key):
                    return child_path, key
                children.append((child_path, child))
            stack.extend(reversed(children))
        elif type(item) is list:
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
    return None


def _violation(obj: Any, text: str, start: int, end: int, limits: Limits) -> tuple[str | None, str] | None:
    """Field size and lone surrogates, checked only when the raw text makes them possible."""
    if end - start > limits.max_field_chars:
        hit = _find_string(obj, limits.max_field_chars)
        if hit is not None:
            return hit[0], f"{len(hit[1]):,} characters exceeds the limit of {limits.max_field_chars:,}"
    if _SURROGATE_ESCAPE.search(text, start, end):
        hit = _find_string(obj, _SURROGATE if limits.allow_nul else _UNSTORABLE)
        if hit is not None:
            char = _UNSTORABLE.search(hit[1])
            assert char is not None
            if char.group() == "\x00":
                return hit[0], "a NUL character (\\u0000) cannot be stored"
            return hit[0], f"invalid Unicode: unpaired surrogate U+{ord(char.group()):04X}"
    return None


def _malformed(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"malformed JSON: {err.msg} at column {err.colno}"
    return f"malformed JSON: {err}"


# -------------------------------------------------------------------------------------- JSON Lines


def _lines(first: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chain((first,), chunks):
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        yield from parts
    yield pending


def _jsonl_objects(lines: Iterator[bytes], limits: Limits) -> Iterator[tuple[int, Any]]:
    """(line number, decoded dict or BadLine) for each non-blank line."""
    decode = _DECODER.raw_decode
    max_depth = limits.max_depth
    max_chars = limits.max_field_chars
    lineno = 0
    for raw in lines:
        lineno += 1
        if not raw or raw.isspace():
            continue
        try:
            line = raw.decode()
        except UnicodeDecodeError as err:
            yield (
                lineno,
                BadLine(
                    lineno, None, f"invalid UTF-8: byte 0x{raw[err.start]:02x} at column {err.start + 1}"
                ),
            )
            continue
        begin, stop = 0, len(line)
        if line[0] != "{" or line[-1] != "}":
            # Not stripped: error columns must match what the user's editor shows.
            begin, stop = stop - len(line.lstrip()), len(line.rstrip())
        # Checked before decoding: a deep bomb must not reach the recursive decoder at all.
        if line.count("{") + line.count("[") > max_depth and _depth(line) > max_depth:
            yield lineno, BadLine(lineno, None, f"nesting deeper than {max_depth} levels")
            continue
        try:
            obj, end = decode(line, begin)
        except ValueError as err:
            message = _malformed(err)
            if lineno == 1 and line.strip() == "{":
                message += " (a pretty-printed JSON object? use a JSON array, or one object per line)"
            yield lineno, BadLine(lineno, None, message)
            continue
        except RecursionError:
            yield lineno, BadLine(lineno, None, f"nesting deeper than {max_depth} levels")
            continue
        if end != stop:
            yield (
                lineno,
                BadLine(lineno, None, f"malformed JSON: extra data after the record at column {end + 1}"),
            )
            continue
        if type(obj) is not dict:
            yield lineno, BadLine(lineno, None, f"expected a JSON object, got {type_name(obj)}")
            continue
        # Inline gate: most lines are short and escape-free, so _violation is rarely called.
        if stop - begin > max_chars or "\\u" in line:
            problem = _violation(obj, line, begin, stop, limits)
            if problem is not None:
                yield lineno, BadLine(lineno, problem[0], problem[1])
                continue
        yield lineno, obj


# --------------------------------------------------------------------------------------- JSON array


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _array_objects(text: str, has_bad_utf8: bool, limits: Limits) -> Iterator[tuple[int, Any]]:
    """(item index, decoded dict or BadLine) for each array item, decoding one item at a time.

    Only the text is held, never the whole list of decoded items. A syntax error cannot be
    skipped (there is no way to know where the next item starts), so it is a FormatError.
    """
    decode = _DECODER.raw_decode
    max_depth = limits.max_depth
    max_chars = limits.max_field_chars
    size = len(text)
    pos = text.index("[") + 1
    index = 0
    pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
    if text.startswith("]", pos):
        raise FormatError("empty file: the JSON array has no records")
    closed = False
    while not closed:
        index += 1
        try:
            obj, end = decode(text, pos)
        except json.JSONDecodeError as err:
            raise FormatError(
                f"malformed JSON in item {index}: {err.msg} at column {err.colno}", line=err.lineno
            ) from None
        except ValueError as err:
            raise FormatError(f"malformed JSON in item {index}: {err}", line=_line_of(text, pos)) from None
        except RecursionError:
            raise FormatError(
                f"item {index}: nesting deeper than {max_depth} levels", line=_line_of(text, pos)
            ) from None
        after = _AFTER_ITEM.match(text, end)
        if after is None:
            what = (
                "the array is not closed with ']'"
                if end >= size
                else f"expected ',' or ']' after item {index}"
            )
            next_token = _WS.match(text, end).end()  # type: ignore[union-attr]
            raise FormatError(f"malformed JSON: {what}", line=_line_of(text, next_token))
        closed = after.group(1) == "]"
        if closed and after.end() != size:
            raise FormatError(
                "malformed JSON: extra data after the closing ']'", line=_line_of(text, after.end())
            )
        start, pos = pos, after.end()
        if has_bad_utf8:
            # surrogateescape turned each undecodable byte into a lone surrogate in the raw text.
            raw = _SURROGATE.search(text, start, end)
            if raw is not None:
                byte = ord(raw.group()) - 0xDC00
                message = f"invalid UTF-8: byte 0x{byte:02x} on line {_line_of(text, raw.start())}"
                yield index, BadLine(index, None, message, "item")
                continue
        if type(obj) is not dict:
            yield index, BadLine(index, None, f"expected a JSON object, got {type_name(obj)}", "item")
            continue
        brackets = text.count("{", start, end) + text.count("[", start, end)
        if brackets > max_depth and _depth(text[start:end]) > max_depth:
            yield index, BadLine(index, None, f"nesting deeper than {max_depth} levels", "item")
            continue
        if end - start > max_chars or text.find("\\u", start, end) != -1:
            problem = _violation(obj, text, start, end, limits)
            if problem is not None:
                yield index, BadLine(index, problem[0], problem[1], "item")
                continue
        yield index, obj


# ------------------------------------------------------------------------------------------- driver


def _convert(
    objects: Iterator[tuple[int, Any]], fmt: str, filename: str | None, limits: Limits, unit: Unit
) -> Iterator[ParsedRecord | BadLine]:
    if fmt == "auto":
        # Buffer until the first good object names the format; what came before is replayed.
        buffered: list[tuple[int, Any]] = []
        for item in objects:
            buffered.append(item)
            if type(item[1]) is dict:
                fmt = format_from_keys(item[1].keys(), filename, line=item[0], unit=unit)
                break
            if len(buffered) >= _DETECT_WINDOW:
                first: BadLine = buffered[0][1]
                raise FormatError(
                    f"could not detect the format: the first {_DETECT_WINDOW} records are all invalid, "
                    f"the first: {first}"
                )
        else:
            if not buffered:
                raise FormatError("empty file: no records")
            # Every record is bad, so the format does not matter: report them as they are.
            yield from (bad for _, bad in buffered)
            return
        objects = chain(buffered, objects)
    convert = _ALL_CONVERTERS[fmt]
    for index, obj in objects:
        if type(obj) is BadLine:
            yield obj
            continue
        try:
            record = convert(obj, index, limits)
        except Invalid as err:
            yield BadLine(index, err.field, err.message, unit)
        else:
            yield record


def _chunks(source: BinaryIO | bytes) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield bytes(source)
        return
    while chunk := source.read(_CHUNK):
        yield chunk


def iter_records(
    source: BinaryIO | bytes,
    *,
    fmt: str = "auto",
    filename: str | None = None,
    limits: Limits = Limits(),
) -> Iterator[ParsedRecord | BadLine]:
    """Read records one at a time; bad records come out as BadLine, whole-file problems raise FormatError.

    JSON Lines are streamed line by line. A JSON array is held as text (bounded by the upload
    limit) and decoded one item at a time; `line` is then the 1-based item index.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)} or auto")
    chunks = _chunks(source)
    head = b""
    for chunk in chunks:
        head = (head + chunk).removeprefix(_BOM) if not head else head + chunk
        if head.strip():
            break
    stripped = head.lstrip()
    if not stripped:
        raise FormatError("empty file: no records")
    if stripped[:1] == b"{":
        yield from _convert(_jsonl_objects(_lines(head, chunks), limits), fmt, filename, limits, "line")
    elif stripped[:1] == b"[":
        data = head + b"".join(chunks)
        try:
            text, has_bad_utf8 = data.decode(), False
        except UnicodeDecodeError:
            text, has_bad_utf8 = data.decode(errors="surrogateescape"), True
        del data
        yield from _convert(_array_objects(text, has_bad_utf8, limits), fmt, filename, limits, "item")
    else:
        raise _not_json(stripped[:4].decode("utf-8", errors="replace")[:1])


def parse_all(
    source: BinaryIO | bytes,
    *,
    fmt: str = "auto",
    filename: str | None = None,
    skip_bad: bool = False,
    limits: Limits = Limits(),
) -> tuple[list[ParsedRecord], list[BadLine]]:
    """All records; FormatError on the first bad one, or with skip_bad the good ones and the list of bad."""
    good: list[ParsedRecord] = []
    bad: list[BadLine] = []
    for item in iter_records(source, fmt=fmt, filename=filename, limits=limits):
        if type(item) is ParsedRecord:
            good.append(item)
        elif skip_bad:
            bad.append(item)  # type: ignore[arg-type]
        else:
            raise item.to_error()  # type: ignore[union-attr]
    return good, bad
