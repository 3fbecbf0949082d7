"""Preference dataset readers (prompt/chosen/rejected, HH-RLHF, UltraFeedback) and pair derivation rules.

No preference dataset is in ../shared/data (SOURCES.md lists none), so the rows below are written in the
datasets' published shapes: HH-RLHF's transcripts, UltraFeedback's completions with GPT-4 annotations, the
binarized UltraFeedback's chosen/rejected messages with scores.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.pipeline.formats import FormatError, detect_format, parse_all, to_dpo, to_dpo_plain
from app.preferences.pairs import derive, verdict


def jsonl(*objs: Any) -> bytes:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs).encode()


HH = {
    "chosen": "\n\nHuman: What are some good houseplants for low light?\n\nAssistant: Pothos and snake plants."
    "\n\nHuman: Which one needs less water?\n\nAssistant: The snake plant: water it every two to three weeks.",
    "rejected": "\n\nHuman: What are some good houseplants for low light?\n\nAssistant: Pothos and snake plants."
    "\n\nHuman: Which one needs less water?\n\nAssistant: I don't know.",
}
UF = {
    "source": "evol_instruct",
    "instruction": "Name three prime numbers.",
    "models": ["alpaca-7b", "gpt-4"],
    "completions": [
        {
            "model": "alpaca-7b",
            "principle": "helpfulness",
            "response": "1, 4, 9",
            "annotations": {
                "helpfulness": {"Rating": "1", "Rationale": "None of them is prime but... 1 is not."},
                "honesty": {"Rating": "N/A", "Rationale": ""},
            },
            "fine-grained_score": 1.25,
            "overall_score": 2.0,
            "critique": "Wrong.",
        },
        {
            "model": "gpt-4",
            "response": "2, 3 and 5.",
            "annotations": {"helpfulness": {"Rating": "5", "Rationale": "Correct and brief."}},
            "fine-grained_score": 4.75,
            "overall_score": 9,
        },
        {"model": "ultralm-13b", "response": "2, 3, 7", "fine-grained_score": 4.75},
    ],
}
BINARIZED = {
    "prompt": "Name three prime numbers.",
    "prompt_id": "abc",
    "chosen": [
        {"role": "user", "content": "Name three prime numbers."},
        {"role": "assistant", "content": "2, 3 and 5."},
    ],
    "rejected": [
        {"role": "user", "content": "Name three prime numbers."},
        {"role": "assistant", "content": "1, 4, 9"},
    ],
    "messages": [
        {"role": "user", "content": "Name three prime numbers."},
        {"role": "assistant", "content": "2, 3 and 5."},
    ],
    "score_chosen": 9.0,
    "score_rejected": 2.0,
}


def test_hh_rlhf_transcripts_split_into_the_shared_conversation_and_the_two_final_answers() -> None:
    (rec,), _ = parse_all(jsonl(HH))
    assert rec.messages == [
        {"role": "user", "content": "What are some good houseplants for low light?"},
        {"role": "assistant", "content": "Pothos and snake plants."},
        {"role": "user", "content": "Which one needs less water?"},
        {"role": "assistant", "content": "The snake plant: water it every two to three weeks."},
    ]
    assert rec.preference is not None
    assert [c["content"] for c in rec.preference["candidates"]] == [
        "The snake plant: water it every two to three weeks.",
        "I don't know.",
    ]
    assert rec.preference["by"] == "human" and rec.preference["format"] == "hh_rlhf"
    assert rec.preference["verdict"] == {"kind": "pairwise", "choice": "a"}


def test_ultrafeedback_completions_become_candidates_ranked_by_score_with_ties_grouped() -> None:
    (rec,), _ = parse_all(jsonl(UF))
    assert rec.instruction == "Name three prime numbers." and rec.output == "2, 3 and 5."
    pref = rec.preference
    assert pref is not None and pref["by"] == "model" and pref["judge_model"] == "gpt-4"
    assert [c["model"] for c in pref["candidates"]] == ["alpaca-7b", "gpt-4", "ultralm-13b"]
    # The two 4.75s tie: one group, so no pair between them.
    assert pref["verdict"] == {"kind": "ranking", "ranking": [[1, 2], [0]]}
    first = pref["candidates"][0]
    assert first["aspects"] == {"helpfulness": 1.0}  # "N/A" is no rating
    assert first["rationales"]["helpfulness"].startswith("None of them")
    assert rec.extra == {"source": "evol_instruct", "models": ["alpaca-7b", "gpt-4"]}


@pytest.mark.parametrize(
    "row",
    [
        BINARIZED,
        {"prompt": "Name three prime numbers.", "chosen": "2, 3 and 5.", "rejected": "1, 4, 9"},
        {
            "prompt": [{"role": "user", "content": "Name three prime numbers."}],
            "chosen": [{"role": "assistant", "content": "2, 3 and 5."}],
            "rejected": [{"role": "assistant", "content": "1, 4, 9"}],
        },
        {"chosen": BINARIZED["chosen"], "rejected": BINARIZED["rejected"]},  # TRL's implicit prompt
    ],
    ids=["ultrafeedback_binarized", "plain", "conversational", "implicit_prompt"],
)
def test_prompt_chosen_rejected_in_every_shape_reads_as_the_same_pair(row: dict[str, Any]) -> None:
    (rec,), _ = parse_all(jsonl(row))
    assert (rec.instruction, rec.output, rec.messages) == ("Name three prime numbers.", "2, 3 and 5.", None)
    assert rec.preference is not None
    assert [c["content"] for c in rec.preference["candidates"]] == ["2, 3 and 5.", "1, 4, 9"]
    assert rec.preference["by"] == "unknown"


def test_binarized_scores_are_kept_on_the_candidates() -> None:
    (rec,), _ = parse_all(jsonl(BINARIZED))
    assert rec.preference is not None
    assert [c.get("score") for c in rec.preference["candidates"]] == [9.0, 2.0]
    assert rec.extra == {"prompt_id": "abc"}  # its `messages`, a copy of chosen, is not kept twice


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (HH, "hh_rlhf"),
        (UF, "ultrafeedback"),
        (BINARIZED, "preference"),
        ({"prompt": "", "chosen": "", "rejected": ""}, "preference"),
    ],
)
def test_preference_formats_are_detected_before_the_keys_they_share(
    row: dict[str, Any], expected: str
) -> None:
    assert detect_format(jsonl(row)) == expected
    assert detect_format(json.dumps([row], indent=2).encode()) == expected


@pytest.mark.parametrize(
    ("row", "fmt", "expected"),
    [
        ({"prompt": "p", "chosen": "a"}, "preference", 'line 2: field "rejected": required field is missing'),
        ({"prompt": "p", "chosen": "a", "rejected": 5}, "preference", 'line 2: field "rejected": expected string or array of messages, got number'),
        ({"chosen": "a", "rejected": "b"}, "preference", 'line 2: field "prompt": required field is missing (chosen and rejected are plain text)'),
        ({"prompt": "p", "chosen": [{"role": "tool", "content": "x"}], "rejected": "b"}, "preference", 'line 2: field "chosen[0].role": unknown role "tool" (expected one of: system, developer, user, assistant)'),
        ({"prompt": "p", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "rejected": "b"}, "preference", 'line 2: field "chosen": expected the prompt\'s turns, then one assistant reply'),
        ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "preference", 'line 2: field "rejected": the turns before the final reply differ from chosen\'s'),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": "high"}, "preference", 'line 2: field "score_chosen": expected a number, got "high"'),
        ({"chosen": "no markers here", "rejected": "\n\nHuman: q\n\nAssistant: a"}, "hh_rlhf", 'line 2: field "chosen": expected a transcript of "\\n\\nHuman: ..." and "\\n\\nAssistant: ..." turns'),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q"}, "hh_rlhf", 'line 2: field "rejected": expected the transcript to end with an "Assistant:" turn'),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"}, "hh_rlhf", 'line 2: field "rejected": the conversation before the final Assistant turn differs from chosen\'s'),
        ({"instruction": "q", "completions": [{"response": "a", "overall_score": 1}]}, "ultrafeedback", 'line 2: field "completions": expected at least two completions to compare'),
        ({"instruction": "q", "completions": [{"response": "a"}, {"response": 3}]}, "ultrafeedback", 'line 2: field "completions[1].response": expected string, got number'),
        ({"instruction": "q", "completions": [{"response": "a"}, {"response": "b"}]}, "ultrafeedback", 'line 2: field "completions": expected scores (fine-grained_score, overall_score or annotations) on two or more'),
        ({"instruction": "q", "completions": [{"response": "a", "annotations": {"honesty": {"Rating": "five"}}}, {"response": "b"}]}, "ultrafeedback", 'line 2: field "completions[0].annotations.honesty.Rating": expected a number, got "five"'),
    ],
)  # fmt: skip
def test_a_malformed_preference_row_is_refused_naming_its_line_and_field(
    row: dict[str, Any], fmt: str, expected: str
) -> None:
    good = (
        {"prompt": "p", "chosen": "a", "rejected": "b"}
        if fmt == "preference"
        else (HH if fmt == "hh_rlhf" else UF)
    )
    with pytest.raises(FormatError) as info:
        parse_all(jsonl(good, row), fmt=fmt)
    assert str(info.value) == expected


def test_dpo_rows_in_messages_and_plain_form() -> None:
    (rec,), _ = parse_all(jsonl(BINARIZED))
    row = {
        "instruction": rec.instruction,
        "input": "",
        "output": rec.output,
        "system": "Be brief.",
        "rejected": "1, 4, 9",
    }
    assert to_dpo(row) == {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name three prime numbers."},
        ],
        "chosen": [{"role": "assistant", "content": "2, 3 and 5."}],
        "rejected": [{"role": "assistant", "content": "1, 4, 9"}],
    }
    assert to_dpo_plain(row) == {
        "prompt": "Name three prime numbers.",
        "chosen": "2, 3 and 5.",
        "rejected": "1, 4, 9",
        "system": "Be brief.",
    }
    (conv,), _ = parse_all(jsonl(HH))
    with pytest.raises(ValueError, match="messages form"):
        to_dpo_plain(
            {"instruction": "", "input": "", "output": "", "messages": conv.messages, "rejected": "x"}
        )


# ------------------------------------------------------------------------------------- pair derivation


def person(
    cands: list[int], choice: str | None = None, ranking: list[list[int]] | None = None, who: int = 1
) -> Any:
    kind = "ranking" if ranking else "pairwise"
    return verdict(
        kind=kind, source="person", candidate_ids=cands, choice=choice, ranking=ranking, voter=f"user:{who}"
    )


def judge(cands: list[int], choice: str | None = None, ranking: list[list[int]] | None = None) -> Any:
    kind = "ranking" if ranking else "pairwise"
    return verdict(
        kind=kind, source="judge", candidate_ids=cands, choice=choice, ranking=ranking, voter="judge"
    )


def pairs(*verdicts: Any) -> list[tuple[int, int, str]]:
    return [(p.chosen_id, p.rejected_id, p.tier) for p in derive([v for v in verdicts if v is not None])]


def test_a_full_ranking_gives_the_best_against_each_worse() -> None:
    assert pairs(person([1, 2, 3, 4], ranking=[[3], [1], [4], [2]])) == [
        (3, 1, "person"),
        (3, 2, "person"),
        (3, 4, "person"),
    ]


def test_a_tie_at_the_top_gives_both_best_against_the_rest_and_no_pair_between_them() -> None:
    assert pairs(person([1, 2, 3], ranking=[[1, 2], [3]])) == [(1, 3, "person"), (2, 3, "person")]


@pytest.mark.parametrize("choice", ["tie", "both_bad"])
def test_tie_and_both_bad_give_no_pair_and_no_judge_fills_in(choice: str) -> None:
    assert pairs(person([1, 2], choice), judge([1, 2], "a")) == []


def test_a_persons_choice_is_never_outvoted_by_judges() -> None:
    assert pairs(person([1, 2], "b"), judge([1, 2], "a"), judge([1, 2], "a"), judge([1, 2], "a")) == [
        (2, 1, "person")
    ]


def test_judges_decide_where_no_person_did() -> None:
    assert pairs(judge([1, 2], "a")) == [(1, 2, "machine")]


def test_imported_human_labels_outrank_judges_and_people_here_outrank_imports() -> None:
    imported = verdict(
        kind="pairwise", source="import", candidate_ids=[1, 2], choice="a", meta={"by": "human"}
    )
    assert pairs(imported, judge([1, 2], "b")) == [(1, 2, "imported_people")]
    assert pairs(imported, person([1, 2], "b")) == [(2, 1, "person")]
    model_import = verdict(
        kind="pairwise", source="import", candidate_ids=[1, 2], choice="a", meta={"by": "model"}
    )
    assert pairs(model_import, judge([1, 2], "b")) == []  # two machines disagree: no majority


def test_annotators_who_disagree_give_no_pair_and_a_majority_gives_one() -> None:
    assert pairs(person([1, 2], "a", who=1), person([1, 2], "b", who=2)) == []
    assert pairs(person([1, 2], "a", who=1), person([1, 2], "b", who=2), person([1, 2], "a", who=3)) == [
        (1, 2, "person")
    ]


def test_aspect_scores_alone_are_advice_not_a_preference() -> None:
    assert verdict(kind="scores", source="judge", candidate_ids=[1]) is None


def test_a_persons_later_verdict_on_a_pair_replaces_their_earlier_one() -> None:
    assert pairs(person([1, 2], "a"), person([1, 2, 3], ranking=[[2], [1], [3]])) == [
        (2, 1, "person"),
        (2, 3, "person"),
    ]


def test_hh_rlhf_row_whose_chosen_goes_on_after_the_parting_turn_keeps_the_rest_as_its_answer() -> None:
    # The shape of harmless-base/test.jsonl line 1255: chosen continues with a further exchange.
    head = "\n\nHuman: Are drag queens men?\n\nAssistant: No."
    row = {
        "chosen": f"{head}\n\nHuman: Isn't that drag kings?\n\nAssistant: Yes.\n\nHuman: Why?\n\nAssistant: Custom.",
        "rejected": f"{head}\n\nHuman: Isn't that drag kings?\n\nAssistant: A drag king is the opposite.",
    }
    (rec,), _ = parse_all(jsonl(row))
    assert rec.messages is not None and rec.messages[-2]["content"] == "Isn't that drag kings?"
    assert rec.preference is not None
    assert [c["content"] for c in rec.preference["candidates"]] == [
        "Yes.\n\nHuman: Why?\n\nAssistant: Custom.",
        "A drag king is the opposite.",
    ]
