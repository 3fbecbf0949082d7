"""Readers for preference datasets: a prompt, its candidate answers and which one is better.

Three shapes (docs/formats.md, "Preference datasets"):

* ``preference``: ``prompt`` / ``chosen`` / ``rejected``, plain strings or lists of messages (TRL's standard and
  conversational preference rows, UltraFeedback-binarized's ``score_chosen`` / ``score_rejected``);
* ``hh_rlhf``: Anthropic HH-RLHF's ``chosen`` / ``rejected`` full transcripts ("\\n\\nHuman: ...
  \\n\\nAssistant: ..."), split into the shared conversation and the two final answers;
* ``ultrafeedback``: ``instruction`` and ``completions`` (each with its ``model``, ``response``, GPT-4's
  ``annotations`` per aspect, ``fine-grained_score`` and ``overall_score``).

Each becomes one :class:`ParsedRecord` whose prompt is the shared conversation and whose ``output`` is the
preferred answer (so the record also reads as supervised data), plus ``preference``: a JSON-able mapping
with the candidates and the dataset's verdict, which the import stores as candidates and a judgment
(app.preferences.imports).
"""

from __future__ import annotations

import math
import re
from typing import Any

from app.pipeline.formats.converters import Invalid, conversation, type_name
from app.pipeline.formats.model import Limits, ParsedRecord

_MISSING: Any = object()
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Who decided, as each dataset documents it: HH-RLHF's labels are crowdworkers' choices (Bai et al. 2022);
# UltraFeedback's ratings are GPT-4's (Cui et al. 2023). A plain prompt/chosen/rejected file says nothing.
HUMAN, MODEL, UNKNOWN = "human", "model", "unknown"


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    if value is _MISSING:
        raise Invalid(key, "required field is missing")
    raise Invalid(key, f"expected string, got {type_name(value)}")


def _messages(value: list[Any], field: str, limits: Limits) -> list[dict[str, str]]:
    if not value:
        raise Invalid(field, "expected at least one message")
    if len(value) > limits.max_turns:
        raise Invalid(field, f"{len(value):,} messages exceeds the limit of {limits.max_turns:,}")
    out = []
    for i, msg in enumerate(value):
        path = f"{field}[{i}]"
        if type(msg) is not dict:
            raise Invalid(path, f"expected object, got {type_name(msg)}")
        role = msg.get("role", _MISSING)
        if type(role) is not str:
            raise Invalid(
                f"{path}.role", "required field is missing" if role is _MISSING else "expected string"
            )
        if role not in _ROLES:
            raise Invalid(f"{path}.role", f'unknown role "{role}" (expected one of: {", ".join(_ROLES)})')
        content = msg.get("content", _MISSING)
        if type(content) is not str:
            what = (
                "required field is missing"
                if content is _MISSING
                else f"expected string, got {type_name(content)}"
            )
            raise Invalid(f"{path}.content", what)
        out.append({"role": _ROLES[role], "content": content})
    return out


def _side(obj: dict[str, Any], key: str, limits: Limits) -> str | list[dict[str, str]]:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    if type(value) is list:
        return _messages(value, key, limits)
    if value is _MISSING:
        raise Invalid(key, "required field is missing")
    raise Invalid(key, f"expected string or array of messages, got {type_name(value)}")


def _final_reply(turns: list[dict[str, str]], field: str) -> str:
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise Invalid(field, "expected the prompt's turns, then one assistant reply")
    return turns[0]["content"]


def _number(value: Any, field: str) -> float | None:
    """A score: a JSON number or a numeric string ("4"); null and "N/A" are no score."""
    if value is None or (type(value) is str and value.strip().upper() in ("", "N/A", "NA")):
        return None
    if type(value) is str:
        try:
            value = float(value)
        except ValueError:
            raise Invalid(field, f'expected a number, got "{value[:40]}"') from None
    if type(value) not in (int, float) or not math.isfinite(value):
        raise Invalid(field, f"expected a number, got {type_name(value)}")
    return float(value)


def _record(
    prompt: list[dict[str, str]], chosen: str, extra: dict[str, Any], line: int, preference: dict[str, Any]
) -> ParsedRecord:
    if not any(m["role"] == "user" for m in prompt):
        raise Invalid("prompt", "expected at least one user turn before the answers")
    rec = conversation([*prompt, {"role": "assistant", "content": chosen}], None, extra, line, "prompt")
    rec.preference = preference
    return rec


def _pairwise(
    fmt: str, by: str, chosen: str, rejected: str, scores: tuple[float | None, float | None]
) -> dict[str, Any]:
    candidates: list[dict[str, Any]] = [{"content": chosen}, {"content": rejected}]
    for cand, score in zip(candidates, scores, strict=True):
        if score is not None:
            cand["score"] = score
    return {"format": fmt, "by": by, "candidates": candidates, "verdict": {"kind": "pairwise", "choice": "a"}}


# ------------------------------------------------------------------------------ prompt/chosen/rejected

_PREFERENCE_USED = frozenset({"prompt", "chosen", "rejected", "score_chosen", "score_rejected"})


def _preference(obj: dict[str, Any], line: int, limits: Limits, fmt: str = "preference") -> ParsedRecord:
    raw_prompt = obj.get("prompt", _MISSING)
    prompt: list[dict[str, str]] | None
    if raw_prompt is _MISSING or raw_prompt is None:
        prompt = None
    elif type(raw_prompt) is str:
        prompt = [{"role": "user", "content": raw_prompt}]
    elif type(raw_prompt) is list:
        prompt = _messages(raw_prompt, "prompt", limits)
    else:
        raise Invalid("prompt", f"expected string or array of messages, got {type_name(raw_prompt)}")
    chosen_side, rejected_side = _side(obj, "chosen", limits), _side(obj, "rejected", limits)
    answers: list[str] = []
    for key, side, other in (
        ("chosen", chosen_side, rejected_side),
        ("rejected", rejected_side, chosen_side),
    ):
        if type(side) is str:
            if prompt is None:
                raise Invalid("prompt", "required field is missing (chosen and rejected are plain text)")
            answers.append(side)
            continue
        assert isinstance(side, list)
        if prompt is not None and side[: len(prompt)] == prompt:
            answers.append(_final_reply(side[len(prompt) :], key))
        elif prompt is not None or len(side) == 1:
            answers.append(_final_reply(side, key))
        else:
            # Implicit prompt (TRL): both sides are the whole conversation; the shared turns are the prompt.
            if type(other) is not list or side[:-1] != other[:-1]:
                raise Invalid("rejected", "the turns before the final reply differ from chosen's")
            prompt = side[:-1]
            answers.append(_final_reply(side[-1:], key))
    if prompt is None:
        raise Invalid("prompt", "required field is missing")
    scores = (
        _number(obj.get("score_chosen"), "score_chosen"),
        _number(obj.get("score_rejected"), "score_rejected"),
    )
    used = _PREFERENCE_USED
    if type(obj.get("chosen")) is list and obj.get("messages") == obj["chosen"]:
        used = used | {"messages"}  # UltraFeedback-binarized repeats the chosen conversation: not kept twice
    extra = {} if obj.keys() <= used else {k: v for k, v in obj.items() if k not in used}
    return _record(prompt, answers[0], extra, line, _pairwise(fmt, UNKNOWN, answers[0], answers[1], scores))


# --------------------------------------------------------------------------------------------- HH-RLHF

# A turn starts at the beginning of the transcript or after a blank line: "\n\nHuman: " / "\n\nAssistant: ".
_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_HH_USED = frozenset({"chosen", "rejected"})


def _transcript(text: str, field: str) -> list[tuple[str, str, int]]:
    """(role, content, where the content starts in `text`) per turn."""
    marks = list(_HH_TURN.finditer(text))
    if not marks or marks[0].start() != 0:
        raise Invalid(field, 'expected a transcript of "\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns')
    turns = []
    for mark, nxt in zip(marks, [*marks[1:], None], strict=True):
        end = nxt.start() if nxt is not None else len(text)
        turns.append((_HH_ROLE[mark.group(1)], text[mark.end() : end].strip(), mark.end()))
    if turns[-1][0] != "assistant":
        raise Invalid(field, 'expected the transcript to end with an "Assistant:" turn')
    return turns


def _hh_rlhf(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    """The prompt is what both transcripts share up to the first Assistant turn where they part; each answer
    is the rest of its transcript. Usually that is the final turn; in a few real rows (5 of the 2,312 of
    harmless-base/test) one transcript goes on after it ("... drag kings.\n\nHuman: ...\n\nAssistant: ..."),
    and that rest is the answer as the dataset has it. Transcripts that part in a Human turn are different
    conversations: refused."""
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if type(chosen) is list or type(rejected) is list:
        return _preference(obj, line, limits, "hh_rlhf")  # conversational rows without a prompt key
    c_text, r_text = _str(obj, "chosen"), _str(obj, "rejected")
    c_turns, r_turns = _transcript(c_text, "chosen"), _transcript(r_text, "rejected")
    if len(c_turns) > limits.max_turns or len(r_turns) > limits.max_turns:
        raise Invalid("chosen", f"more turns than the limit of {limits.max_turns:,}")
    shared = 0
    last = min(len(c_turns), len(r_turns)) - 1
    while shared < last and c_turns[shared][:2] == r_turns[shared][:2]:
        shared += 1
    if c_turns[shared][0] != "assistant" or r_turns[shared][0] != "assistant":
        raise Invalid("rejected", "the conversation before the final Assistant turn differs from chosen's")
    extra = {} if obj.keys() <= _HH_USED else {k: v for k, v in obj.items() if k not in _HH_USED}
    answers = c_text[c_turns[shared][2] :].strip(), r_text[r_turns[shared][2] :].strip()
    prompt = [{"role": role, "content": content} for role, content, _ in c_turns[:shared]]
    preference = _pairwise("hh_rlhf", HUMAN, answers[0], answers[1], (None, None))
    return _record(prompt, answers[0], extra, line, preference)


# --------------------------------------------------------------------------------------- UltraFeedback

_UF_USED = frozenset({"instruction", "completions"})
# Which figure ranks the completions, first present wins: the mean of GPT-4's four aspect ratings (what the
# binarized UltraFeedback ranks by since its correction), then GPT-4's overall critique score.
_UF_SCORES = ("fine-grained_score", "overall_score")
UF_JUDGE = "gpt-4"


def _ultrafeedback(obj: dict[str, Any], line: int, limits: Limits) -> ParsedRecord:
    instruction = _str(obj, "instruction")
    completions = obj.get("completions", _MISSING)
    if type(completions) is not list:
        what = (
            "required field is missing"
            if completions is _MISSING
            else f"expected array, got {type_name(completions)}"
        )
        raise Invalid("completions", what)
    if len(completions) < 2:
        raise Invalid("completions", "expected at least two completions to compare")
    if len(completions) > limits.max_turns:
        raise Invalid(
            "completions", f"{len(completions):,} completions exceeds the limit of {limits.max_turns:,}"
        )
    candidates: list[dict[str, Any]] = []
    for i, comp in enumerate(completions):
        path = f"completions[{i}]"
        if type(comp) is not dict:
            raise Invalid(path, f"expected object, got {type_name(comp)}")
        response = comp.get("response", _MISSING)
        if type(response) is not str:
            what = (
                "required field is missing"
                if response is _MISSING
                else f"expected string, got {type_name(response)}"
            )
            raise Invalid(f"{path}.response", what)
        model = comp.get("model")
        if model is not None and type(model) is not str:
            raise Invalid(f"{path}.model", f"expected string, got {type_name(model)}")
        cand: dict[str, Any] = {"content": response, "model": model}
        for key in _UF_SCORES:
            score = _number(comp.get(key), f"{path}.{key}")
            if score is not None:
                cand.setdefault("score", score)
                cand[key] = score
        annotations = comp.get("annotations")
        if annotations is not None:
            if type(annotations) is not dict:
                raise Invalid(f"{path}.annotations", f"expected object, got {type_name(annotations)}")
            aspects, rationales = _aspects(annotations, f"{path}.annotations")
            if aspects:
                cand["aspects"] = aspects
                cand.setdefault("score", round(sum(aspects.values()) / len(aspects), 4))
            if rationales:
                cand["rationales"] = rationales
        critique = comp.get("critique")
        if type(critique) is str and critique:
            cand["critique"] = critique
        candidates.append(cand)
    scored = [c for c in candidates if "score" in c]
    if len(scored) < 2:
        raise Invalid(
            "completions", "expected scores (fine-grained_score, overall_score or annotations) on two or more"
        )
    # Groups of equal score, best first: a tie ranks its candidates together (and makes no pair between them).
    levels = sorted({c["score"] for c in scored}, reverse=True)
    ranking = [[i for i, c in enumerate(candidates) if c.get("score") == level] for level in levels]
    best = candidates[ranking[0][0]]["content"]
    extra = {} if obj.keys() <= _UF_USED else {k: v for k, v in obj.items() if k not in _UF_USED}
    preference = {
        "format": "ultrafeedback",
        "by": MODEL,
        "judge_model": UF_JUDGE,
        "candidates": candidates,
        "verdict": {"kind": "ranking", "ranking": ranking},
    }
    return _record([{"role": "user", "content": instruction}], best, extra, line, preference)


def _aspects(annotations: dict[str, Any], path: str) -> tuple[dict[str, float], dict[str, str]]:
    """{aspect: rating} and {aspect: rationale} from UltraFeedback's {aspect: {"Rating", "Rationale"}}
    (a list of such objects in some releases: the first)."""
    ratings: dict[str, float] = {}
    rationales: dict[str, str] = {}
    for aspect, note in annotations.items():
        if type(note) is list:
            note = note[0] if note else None
        if type(note) is not dict:
            continue
        name = aspect.lower().replace("-", "_").replace(" ", "_")
        rating = _number(note.get("Rating", note.get("rating")), f"{path}.{aspect}.Rating")
        if rating is not None:
            ratings[name] = rating
        rationale = note.get("Rationale", note.get("rationale"))
        if type(rationale) is str and rationale:
            rationales[name] = rationale
    return ratings, rationales


PREFERENCE_CONVERTERS = {"preference": _preference, "hh_rlhf": _hh_rlhf, "ultrafeedback": _ultrafeedback}
PREFERENCE_FORMATS = tuple(PREFERENCE_CONVERTERS)
