"""Parsing what teachers really return."""

from __future__ import annotations

import pytest

from app.pipeline.listparse import parse_equal, parse_numbered_list, parse_yes_no


@pytest.mark.parametrize(
    "text",
    [
        "9. Write a poem about the sea.\n10. Explain why the sky is blue.",
        "9) Write a poem about the sea.\n10) Explain why the sky is blue.",
        "Task 9: Write a poem about the sea.\nTask 10: Explain why the sky is blue.",
        "**9.** Write a poem about the sea.\n**10.** Explain why the sky is blue.",
        "### 9. Write a poem about the sea.\n### 10. Explain why the sky is blue.",
        "(9) Write a poem about the sea.\n(10) Explain why the sky is blue.",
        "9. Instruction: Write a poem about the sea.\n10. Instruction: Explain why the sky is blue.",
        '9. **Write a poem about the sea.**\n10. "Explain why the sky is blue."',
        "- Write a poem about the sea.\n- Explain why the sky is blue.",
    ],
)
def test_numbered_list_styles_give_the_same_items(text: str) -> None:
    assert parse_numbered_list(text) == ["Write a poem about the sea.", "Explain why the sky is blue."]


def test_chatter_before_and_after_the_list_is_dropped() -> None:
    text = (
        "Sure! Here are some more tasks:\n\n9. Write a haiku about autumn.\n10. Sort these numbers: 4, 1, 3.\n\n"
        "Let me know if you would like more tasks!"
    )
    assert parse_numbered_list(text) == ["Write a haiku about autumn.", "Sort these numbers: 4, 1, 3."]


def test_truncated_last_item_is_dropped() -> None:
    text = "9. Write a haiku about autumn.\n10. Explain how vaccines train the"
    assert parse_numbered_list(text, truncated=True) == ["Write a haiku about autumn."]
    assert parse_numbered_list(text) == ["Write a haiku about autumn.", "Explain how vaccines train the"]


def test_numbers_inside_an_item_do_not_start_a_new_item() -> None:
    text = "1. Estimate how 3.5 million people commute.\n2. List 2 reasons\n   why cats purr."
    assert parse_numbered_list(text) == [
        "Estimate how 3.5 million people commute.",
        "List 2 reasons why cats purr.",
    ]


def test_chinese_list_styles() -> None:
    text = "好的，下面是更多任务：\n9、写一首关于春天的诗。\n任务10：解释光合作用。\n第11条：给出三个例子"
    assert parse_numbered_list(text) == ["写一首关于春天的诗。", "解释光合作用。", "给出三个例子"]


def test_text_without_a_list_gives_nothing() -> None:
    assert parse_numbered_list("I cannot come up with more tasks.") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        (" Yes.", True),
        ("yes, it is", True),
        ("Answer: No", False),
        ("no", False),
        ("是", True),
        ("是的", True),
        ("否", False),
        ("不是", False),
        ("It depends", None),
        ("Not sure", None),
    ],
)
def test_yes_no_answers(text: str, expected: bool | None) -> None:
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Equal", True),
        ("Equal.", True),
        ("Not Equal", False),
        ("not equal.", False),
        ("相等", True),
        ("不相等", False),
        ("?", None),
    ],
)
def test_equal_answers(text: str, expected: bool | None) -> None:
    assert parse_equal(text) is expected
