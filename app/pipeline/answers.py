"""Final answers: read the one a solution ends with, read a record's reference, and compare them.

What is compared (docs/generation.md, "Reasoning traces"):

* **Numbers.** When both the solution's final answer and the reference read as a number, the numbers are
  compared: ``|a - b| <= ABS_TOL + REL_TOL * |b|``. A number is read after stripping currency signs
  (``$ € £ ¥``), thousands separators (``1,250``; ``1 250``), a trailing ``%`` (``12.5%`` reads 12.5, not
  0.125: references write percentages the way solutions do) and any words around it ("72 clips",
  "$1,250.00." -> 1250). Fractions ``3/4`` and mixed numbers ``1 1/2`` read as their value; LaTeX
  ``\\frac{3}{4}`` and ``\\boxed{...}`` too.
* **Text.** Otherwise both sides are normalised (Unicode NFKC, case-folded, punctuation and articles
  removed, whitespace collapsed) and must be equal.

A solution with no final answer we can find is *unparseable*, never a guess.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

# GSM8K's answers are integers and money amounts written to the cent; a relative tolerance of 1e-6 forgives
# float formatting (0.30000000000000004) and never equates two different cent amounts below 10,000.
REL_TOL = 1e-6
# An absolute floor so that 0 matches -0.0 and 1e-12.
ABS_TOL = 1e-9

_MARKERS = (
    r"####\s*",
    r"\\boxed\{",
    r"final answer\s*(?:is)?\s*[:：]?\s*",
    r"the answer is\s*[:：]?\s*",
    r"answer\s*[:：]\s*",
    r"最终答案\s*(?:是|为)?\s*[:：]?\s*",
    r"答案\s*(?:是|为)?\s*[:：]?\s*",
)
_MARKER_RE = re.compile("|".join(f"(?:{m})" for m in _MARKERS), re.I)
# Digits grouped by three with a comma or a (narrow, no-break) space are one number ("1,250", "100 000");
# other digits after a space are the next number ("80 18-inch lengths": 80, then 18).
_NUM = r"[-−]?(?:\d{1,3}(?:[,\u00a0\u202f ]\d{3})+(?!\d)|\d+)(?:\.\d+)?|[-−]?\.\d+"
_NUMBER_RE = re.compile(
    rf"(?P<mixed>(?P<whole>[-−]?\d+)\s+(?P<mn>\d+)\s*/\s*(?P<md>\d+))"
    rf"|\\frac\{{(?P<fn>{_NUM})\}}\{{(?P<fd>{_NUM})\}}"
    rf"|(?P<num>{_NUM})(?:\s*/\s*(?P<den>\d[\d,]*))?"
)


@dataclass(frozen=True)
class AnswerCheck:
    status: Literal["matched", "mismatched", "unparseable"]
    final: str  # the final answer as the solution wrote it ("" when none was found)
    reference: str
    compared: Literal["number", "text", "none"]
    final_value: float | None = None
    reference_value: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "final": self.final,
            "reference": self.reference,
            "compared": self.compared,
            "final_value": self.final_value,
            "reference_value": self.reference_value,
            "rel_tol": REL_TOL,
        }


def _plain(text: str) -> str:
    return text.replace("−", "-").replace("\u00a0", " ").replace("\u202f", " ")


def _to_float(raw: str) -> float | None:
    cleaned = re.sub(r"[,\s]", "", _plain(raw))
    try:
        value = float(Fraction(cleaned))
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def parse_number(text: str) -> float | None:
    """The one number a short answer states ("$1,250.00", "72 clips", "3/4", "12.5%"); ``None`` when it
    states none, or several different ones ("3 or 4" is no single answer)."""
    values: list[float] = []
    for m in _NUMBER_RE.finditer(_plain(text)):
        if m.group("mixed"):
            whole = _to_float(m.group("whole"))
            frac = _to_float(f"{m.group('mn')}/{m.group('md')}")
            if whole is None or frac is None:
                continue
            values.append(whole - frac if whole < 0 else whole + frac)
        elif m.group("fn") is not None:
            value = _to_float(m.group("fn") + "/" + m.group("fd"))
            if value is not None:
                values.append(value)
        else:
            raw = m.group("num").strip().rstrip(",")
            # "1 250" groups digits by three; "3 4" is two numbers, read as such.
            parts = [raw] if re.fullmatch(r"[-\d]{1,4}(?: \d{3})+(?:\.\d+)?", raw) else raw.split()
            for i, part in enumerate(parts):
                den = m.group("den") if i == len(parts) - 1 else None
                value = _to_float(f"{part}/{den}" if den else part)
                if value is not None:
                    values.append(value)
    distinct = {round(v, 9) for v in values}
    return values[0] if len(distinct) == 1 else None


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    text = re.sub(r"\b(?:a|an|the)\b", " ", text)
    return " ".join(text.split())


def _balanced(text: str) -> str:
    """The inside of ``\\boxed{...}`` (the marker consumed the opening brace)."""
    depth = 1
    for i, ch in enumerate(text):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return text[:i]
    return text


def final_answer(solution: str) -> str | None:
    """The final answer a solution ends with: after its last marker ("#### ", "The answer is", "Final
    answer:", ``\\boxed{}``, "答案："), to the end of that line (after its last "=" if it has one); else a
    last line that is a bare number.
    ``None`` when there is none."""
    text = solution.strip()
    if not text:
        return None
    matches = list(_MARKER_RE.finditer(text))
    if matches:
        last = matches[-1]
        rest = text[last.end() :]
        if last.group(0).startswith("\\boxed"):
            rest = _balanced(rest)
        line = rest.strip().split("\n", 1)[0].strip().strip("*").strip()
        line = re.sub(r"^\$+|\$+$", "", line) if line.count("$") >= 2 else line  # LaTeX $...$ delimiters
        # "The answer is 48 + 24 = 72": what the working equals is the answer.
        line = line.rsplit("=", 1)[1].strip() if "=" in line else line
        return line.rstrip(".。").strip() or None
    last_line = text.splitlines()[-1].strip()
    if parse_number(last_line) is not None and len(last_line) <= 40:
        return last_line.rstrip(".。").strip()
    return None


# A record's output shorter than this is taken whole as its reference answer ("Paris", "72", "B").
SHORT_REFERENCE = 64


def reference_answer(
    output: str, mode: Literal["auto", "marker", "last_number", "output"] = "auto"
) -> str | None:
    """The reference final answer a record's output states.

    ``marker``: after its "#### " (GSM8K's own format) or another final-answer marker; ``output``: the
    whole output; ``last_number``: the last number in the output (GSM8K in Alpaca form ends in it);
    ``auto``: marker, else the whole output when shorter than SHORT_REFERENCE and stating at most one
    number, else the last number."""
    text = output.strip()
    if not text:
        return None
    if mode in ("marker", "auto") and _MARKER_RE.search(text):
        return final_answer(text)
    if mode == "marker":
        return None
    if mode == "output":
        return text
    # A short output is the answer itself ("Paris", "$1,250") unless it is a worked line naming several
    # numbers ("she earned 0.2 x 50 = $10."), whose last number is the answer.
    single = parse_number(text) is not None or not re.search(r"\d", text)
    if mode == "auto" and len(text) < SHORT_REFERENCE and single:
        return text
    numbers = list(_NUMBER_RE.finditer(_plain(text)))
    if not numbers:
        return None
    return numbers[-1].group(0).strip().rstrip(",")


def check_answer(solution: str, reference: str) -> AnswerCheck:
    """Compare the solution's final answer with the reference: as numbers when both read as one, else as
    normalised text."""
    final = final_answer(solution)
    if final is None:
        return AnswerCheck("unparseable", "", reference, "none")
    ref_value = parse_number(reference)
    if ref_value is not None:
        value = parse_number(final)
        if value is None:
            return AnswerCheck("unparseable", final, reference, "number", None, ref_value)
        ok = abs(value - ref_value) <= ABS_TOL + REL_TOL * abs(ref_value)
        return AnswerCheck("matched" if ok else "mismatched", final, reference, "number", value, ref_value)
    ok = normalise_text(final) == normalise_text(reference) and bool(normalise_text(final))
    return AnswerCheck("matched" if ok else "mismatched", final, reference, "text")
