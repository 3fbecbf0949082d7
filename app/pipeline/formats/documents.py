"""Plain documents for instruction backtranslation: read .txt/.md/JSONL/JSON, split into passages.

A passage is a slice of its document, so every passage keeps its character offsets (``start``/``end``,
Python string indices: code points, hence one per CJK character) and ``document[start:end] == text``.

Splitting is paragraph-aware: whole paragraphs (blocks separated by a blank line) are packed into a
passage while it stays within ``max_chars``. A paragraph longer than the limit is cut at the last sentence
end that fits, else at the last whitespace, else between two CJK characters (each is a word of its own),
so a Latin word is never cut. Only a single run of non-space, non-CJK characters longer than the limit
(a URL, a base64 blob) is cut inside: there is no other place to cut it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from app.pipeline.formats.model import FormatError

DocumentFormat = Literal["auto", "text", "jsonl", "json"]
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\s*\n[ \t\r\f\v]*\n|\s*\Z)", re.S)
_SENTENCE_END = re.compile(r"(?:[.!?…][\"'”’)\]]*(?=\s))|[。！？；!?][”’」』）]*")
_SPACE = re.compile(r"\s+")
_CJK = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\u3000-\u303f\uff00-\uffef]"
)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Document:
    name: str
    text: str
    line: int
    """Where the document starts in the file: 1 for a text file, its line (JSONL) or item (JSON)."""


@dataclass(frozen=True)
class Passage:
    text: str
    start: int
    end: int
    index: int


def document_format(filename: str | None, fmt: DocumentFormat = "auto") -> Literal["text", "jsonl", "json"]:
    """The reader for a file: chosen explicitly, or by its name (.jsonl, .json, else plain text)."""
    if fmt != "auto":
        return fmt
    name = (filename or "").lower()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json"):
        return "json"
    return "text"


def _decode(data: bytes) -> str:
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FormatError("not valid UTF-8", line=line) from exc
    bad = _UNSTORABLE.search(text)
    if bad:
        raise FormatError(
            "holds a NUL character, which no text column can store", line=text.count("\n", 0, bad.start()) + 1
        )
    return text


def _text_of(value: Any, *, field: str, line: int, unit: Literal["line", "item"]) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if field not in value:
            keys = ", ".join(f'"{k}"' for k in list(value)[:12]) or "none"
            raise FormatError(f"missing (the object has {keys})", line=line, field=field, unit=unit)
        text = value[field]
        if not isinstance(text, str):
            raise FormatError(
                f"expected a string, got {type(text).__name__}", line=line, field=field, unit=unit
            )
        if _UNSTORABLE.search(text):
            raise FormatError("holds a NUL character or a lone surrogate", line=line, field=field, unit=unit)
        return text
    raise FormatError(f"expected an object with a {field!r} field or a string", line=line, unit=unit)


def _name_of(value: Any, fallback: str) -> str:
    if isinstance(value, dict):
        for key in ("title", "name", "id", "url"):
            if isinstance(value.get(key), str | int) and str(value[key]).strip():
                return str(value[key]).strip()[:200]
    return fallback


def read_documents(
    data: bytes,
    *,
    filename: str | None,
    fmt: DocumentFormat = "auto",
    text_field: str = "text",
    max_chars: int = 1_000_000,
) -> list[Document]:
    """Every document of a file, checked whole: the first bad line raises FormatError naming it."""
    kind = document_format(filename, fmt)
    text = _decode(data)
    base = os.path.basename(filename or "document")
    docs: list[Document] = []
    if kind == "text":
        docs.append(Document(base, text, 1))
    elif kind == "jsonl":
        for n, raw in enumerate(text.split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise FormatError(f"not valid JSON ({exc})", line=n) from exc
            docs.append(
                Document(
                    _name_of(value, f"{base}#{n}"), _text_of(value, field=text_field, line=n, unit="line"), n
                )
            )
    else:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            line = getattr(exc, "lineno", None)
            raise FormatError(f"not valid JSON ({exc})", line=line) from exc
        if not isinstance(value, list):
            value = [value]
        for n, item in enumerate(value, start=1):
            docs.append(
                Document(
                    _name_of(item, f"{base}#{n}"), _text_of(item, field=text_field, line=n, unit="item"), n
                )
            )
    unit: Literal["line", "item"] = "item" if kind == "json" else "line"
    for doc in docs:
        if len(doc.text) > max_chars:
            raise FormatError(f"the document is longer than {max_chars} characters", line=doc.line, unit=unit)
    if not any(d.text.strip() for d in docs):
        raise FormatError("the file holds no text")
    return docs


def _cut(text: str, start: int, end: int, max_chars: int) -> int:
    """Where to end a passage that starts at ``start`` inside the paragraph ``[start, end)``."""
    limit = start + max_chars
    window = text[start:limit]
    best = 0
    for match in _SENTENCE_END.finditer(window):
        best = match.end()
    if best > max_chars // 4:  # a sentence end near the start would leave a scrap of a passage
        return start + best
    spaces = [m.start() for m in _SPACE.finditer(window) if m.start() > 0]
    # Whitespace just past the window also ends the word that fills it.
    if limit < end and text[limit].isspace():
        spaces.append(max_chars)
    cjk = [i for i in range(max_chars - 1, 0, -1) if _CJK.match(window[i]) or _CJK.match(window[i - 1])][:1]
    cut = max([*spaces, *cjk], default=0)
    return start + (cut or max_chars)


def _pieces(text: str, start: int, end: int, max_chars: int) -> Iterator[tuple[int, int]]:
    """A paragraph as spans of at most ``max_chars``, trimmed of surrounding whitespace."""
    while start < end:
        if end - start <= max_chars:
            yield start, end
            return
        cut = _cut(text, start, end, max_chars)
        stop = cut
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        if stop > start:
            yield start, stop
        start = cut
        while start < end and text[start].isspace():
            start += 1


def split_passages(text: str, *, max_chars: int = 2000, min_chars: int = 1) -> list[Passage]:
    """The document as passages of at most ``max_chars`` characters (see the module docstring); passages
    shorter than ``min_chars`` (headings alone, stray lines) are left out."""
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    spans: list[tuple[int, int]] = []
    for para in _PARAGRAPH.finditer(text):
        spans.extend(_pieces(text, para.start(), para.end(), max_chars))
    passages: list[Passage] = []
    current: tuple[int, int] | None = None
    for start, end in spans:
        if current is not None and end - current[0] <= max_chars:
            current = (current[0], end)
            continue
        if current is not None:
            passages.append(Passage(text[current[0] : current[1]], current[0], current[1], len(passages)))
        current = (start, end)
    if current is not None:
        passages.append(Passage(text[current[0] : current[1]], current[0], current[1], len(passages)))
    kept = [p for p in passages if len(p.text) >= min_chars]
    return [Passage(p.text, p.start, p.end, i) for i, p in enumerate(kept)]
