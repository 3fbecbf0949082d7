"""Parse what teachers really return: numbered lists in any style, chatter, markdown, yes/no answers."""

from __future__ import annotations

import re

_LABEL_WORDS = r"(?:task|instruction|question|prompt|item|example|任务|指令|问题|题目)"
# A list marker at the start of a line: "1.", "1)", "(1)", "1、", "Task 1:", "**1.**", "### 1.", "- 1.",
# "第1条". The digit group must not be followed by another digit ("3.5 million" is not an item).
_MARKER = re.compile(
    r"^[ \t]*(?:[#>]+[ \t]*|[-*+][ \t]+)?(?:\*\*|__)?[ \t]*"
    rf"(?:{_LABEL_WORDS}[ \t]*#?[ \t]*|第[ \t]*)?"
    r"[(（\[]?(?P<num>\d{1,3})(?!\d)[ \t]*(?:[.)）\]:：、]|[条个][ \t]*[:：]?|-(?=\s))(?:\*\*|__)?(?!\d)[ \t]*(?:\*\*|__)?",
    re.IGNORECASE | re.MULTILINE,
)
_BULLET = re.compile(r"^[ \t]*[-*•][ \t]+", re.MULTILINE)
_ITEM_LABEL = re.compile(
    r"^(?:\*\*|__)?(?:instruction|task|prompt|指令|任务)[ \t]*(?:\*\*|__)?[ \t]*[:：](?:\*\*|__)?[ \t]*",
    re.IGNORECASE,
)


def clean_item(text: str) -> str:
    """Strip markdown emphasis, a leading "Instruction:" label, wrapping quotes and outer whitespace."""
    item = text.strip()
    item = _ITEM_LABEL.sub("", item).strip()
    for pair in ("**", "__", "`"):
        if item.startswith(pair) and item.endswith(pair) and len(item) > 2 * len(pair):
            item = item[len(pair) : -len(pair)].strip()
    # Bold fragments inside ("**Write** a poem") are formatting, not content.
    item = item.replace("**", "")
    if len(item) >= 2 and item[0] in "\"'“「" and item[-1] in "\"'”」":
        item = item[1:-1].strip()
    return item


def parse_numbered_list(text: str, *, truncated: bool = False) -> list[str]:
    """The items of a numbered (or, failing that, bulleted) list, in order.

    Text before the first marker is chatter ("Sure! Here are more tasks:") and is dropped; so is a
    closing paragraph after the last item ("Let me know if you need more."). When ``truncated`` (the
    teacher hit its length limit, ``finish_reason == "length"``) the last item is cut off and dropped.
    """
    matches = list(_MARKER.finditer(text))
    if not matches:
        matches = list(_BULLET.finditer(text))
        if not matches:
            return []
    items: list[str] = []
    for idx, match in enumerate(matches):
        end = matches[idx + 1].start() if idx + 1 < len(matches) else len(text)
        body = text[match.end() : end]
        is_last = idx + 1 == len(matches)
        if is_last:
            # Whatever follows a blank line after the last item is the teacher talking, not an item.
            body = re.split(r"\n[ \t]*\n", body.strip(), maxsplit=1)[0]
        items.append(clean_item(" ".join(line.strip() for line in body.strip().splitlines())))
    if truncated and items:
        items.pop()
    return [item for item in items if item]


_YES = re.compile(r"^\W*(?:yes|y|true|是|是的|对|属于)\b", re.IGNORECASE)
_NO = re.compile(r"^\W*(?:no|n|false|否|不是|不|不属于)\b", re.IGNORECASE)
_ZH_YES = re.compile(r"^\W*(?:是|对|属于)")
_ZH_NO = re.compile(r"^\W*(?:否|不是|不属于|不)")


def parse_yes_no(text: str) -> bool | None:
    """``True`` for a yes, ``False`` for a no, ``None`` when the answer is neither."""
    answer = text.strip()
    # "Answer: Yes" / "答案：是" — the label is noise.
    answer = re.sub(
        r"^(?:answer|is it classification\??|答案|回答)[ \t]*[:：]?", "", answer, flags=re.I
    ).strip()
    if _ZH_NO.match(answer):
        return False
    if _ZH_YES.match(answer):
        return True
    if _NO.match(answer):
        return False
    if _YES.match(answer):
        return True
    return None


def parse_equal(text: str) -> bool | None:
    """``True`` for "Equal", ``False`` for "Not Equal" (and their Chinese forms), ``None`` otherwise."""
    answer = text.strip().lower()
    if re.search(r"not[\s_-]*equal|不相等|不同|不一样", answer):
        return False
    if re.search(r"\bequal\b|相等|相同|一样", answer):
        return True
    return None
