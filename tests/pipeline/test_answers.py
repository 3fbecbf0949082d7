"""Final answers as models write them, compared with references as datasets write them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.pipeline.answers import check_answer, final_answer, parse_number, reference_answer
from app.pipeline.rewrite import classify


@pytest.mark.parametrize(
    ("solution", "reference"),
    [
        ("She pays 1000 + 250.\nThe answer is $1,250.00.", "1250"),
        ("48 + 24 = 72\n#### 72", "72 clips"),
        ("So the result is $\\boxed{\\frac{3}{4}}$", "0.75"),
        ("**Final answer:** 12.5% of the class", "12.5%"),
        ("Answer: 1 1/2 cups", "1.5"),
        ("所以一共是 1 250 元。\n答案：1 250", "1250"),
        ("Step 1...\n72", "72"),
        ("The answer is Paris.", "paris"),
        ("The answer is: the Mitochondria", "mitochondria"),
    ],
)
def test_messy_final_answers_match_their_reference(solution: str, reference: str) -> None:
    assert check_answer(solution, reference).status == "matched"


@pytest.mark.parametrize(
    ("solution", "reference", "status"),
    [
        ("The answer is $1,251.", "1250", "mismatched"),
        ("The answer is 1250.01", "1250", "mismatched"),  # cents differ: outside the 1e-6 tolerance
        ("The answer is 3 or 4", "3", "unparseable"),  # two different numbers: no single answer
        ("It depends on how you read it.", "3", "unparseable"),
        ("", "3", "unparseable"),
        ("The answer is London.", "Paris", "mismatched"),
    ],
)
def test_wrong_or_missing_final_answers_are_told_apart(solution: str, reference: str, status: str) -> None:
    assert check_answer(solution, reference).status == status


def test_gsm8k_references_are_the_last_number_of_each_worked_solution(shared_data: Path) -> None:
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    for row in rows[:500]:
        reference = reference_answer(row["output"])
        assert reference is not None
        last = re.findall(r"\d[\d,]*(?:\.\d+)?", row["output"])[-1].rstrip(".")
        assert parse_number(reference) == pytest.approx(float(last.replace(",", "")))
        # A solution written the way the dataset writes it checks as its own answer.
        assert check_answer(f"{row['output']}\n#### {last}", reference).status == "matched"


def test_short_outputs_are_their_own_reference_and_markers_win() -> None:
    assert reference_answer("Paris") == "Paris"
    assert reference_answer("Some working...\n#### 1,000") == "1,000"
    assert reference_answer("Working 50 minutes, she earned 0.2 x 50 = $10.") == "10"
    assert reference_answer("", "auto") is None
    assert final_answer("no marker and a long last line of prose about 3 apples and 4 pears") is None


def test_rewrite_chatter_and_wrapping_fences_are_removed_and_an_echo_is_no_rewrite() -> None:
    assert classify("Sure! Here is the improved response:\n\nBetter.", "Good.") == ("Better.", "rewritten")
    assert classify("```\nBetter.\n```", "Good.") == ("Better.", "rewritten")
    assert classify("```python\nprint(1)\n```\nThen run it.", "x")[0].startswith("```python")
    assert classify("好的，以下是改写后的回答：\n更好。", "好。") == ("更好。", "rewritten")
    assert classify("Good.", " good. ")[1] == "unchanged"
    assert classify("I'm sorry, but I can't help with that.", "Good.")[1] == "refused"
    assert classify("   ", "Good.")[1] == "empty"
