"""Final answers as models write them, compared with references as datasets write them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.pipeline.answers import check_answer, final_answer, reference_answer
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


# The last number of a worked solution as written: currency sign, digits grouped by commas or spaces,
# a fraction or decimal, then a percent sign or the unit word after it ("$10", "100 000", "624 pages").
_WRITTEN = re.compile(
    r"\$?(?:-?(?:\d{1,3}(?:[, ]\d{3})+(?!\d)|\d+)(?:[./]\d+)?|-?\.\d+)(?:\s*%|\s+[A-Za-z]+)?"
)


def test_no_gsm8k_solution_restating_its_own_answer_is_rejected(shared_data: Path) -> None:
    """The false-rejection rate published in docs/generation.md: every one of the 7,473 human-written
    GSM8K solutions, ended with "The answer is <its last number as written>.", matches its reference."""
    rows = json.loads((shared_data / "alpacadatacleaned" / "gsm_8k_train.json").read_text(encoding="utf-8"))
    rejected = []
    for row in rows:
        reference = reference_answer(row["output"])
        assert reference is not None
        written = _WRITTEN.findall(row["output"])[-1].rstrip(".")
        if check_answer(f"{row['output']}\nThe answer is {written}.", reference).status != "matched":
            rejected.append((written, reference))
    assert len(rows) == 7473 and rejected == []


def test_worked_lines_are_several_numbers_not_one() -> None:
    # "80 18-inch lengths" is 80 then 18, never one number; "100 000" is one. The last number (18) is not
    # this GSM8K row's answer (80): the Alpaca copy lost the "#### 80" line, so a right trace is dropped as
    # a mismatch there (a loss, never a wrong trace kept); the docs say so.
    assert reference_answer("there are 120/1.5 = 80 18-inch lengths on which seeds can be planted.") == "18"
    assert reference_answer("the average added is 17 000/5 = 3 400.", "last_number") == "3 400"
    assert (
        check_answer("the final answer is 15 gallons * 8 pints / gallon = 120 pints", "120").status
        == "matched"
    )


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
