"""Instruction backtranslation's pure parts: documents read and split into passages (limits, CJK, offsets),
bad documents refused naming the line, and the pipeline against the fake teacher."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.pipeline.backtranslate import (
    BacktranslateItem,
    BacktranslateParams,
    BacktranslateResult,
    parse_instruction,
    run_backtranslate,
)
from app.pipeline.formats.documents import read_documents, split_passages
from app.pipeline.formats.model import FormatError
from app.pipeline.llm import Gateway
from tests.fake_teacher import FakeTeacher, teacher_for

CJK = re.compile(r"[\u4e00-\u9fff]")


def long_answers(shared_data: Path, n: int = 40) -> list[str]:
    rows = json.loads((shared_data / "alpaca_eval" / "gpt4_1106_preview.model_outputs.json").read_text())
    return sorted((r["output"] for r in rows), key=len, reverse=True)[:n]


def belle_answers(shared_data: Path, n: int = 40) -> list[str]:
    with (shared_data / "belle" / "dev1K.json").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return sorted((r["output"] for r in rows), key=len, reverse=True)[:n]


def check_split(text: str, max_chars: int) -> list[str]:
    passages = split_passages(text, max_chars=max_chars)
    assert passages, "a document with text has passages"
    words = set(re.findall(r"[A-Za-z0-9']+", text))
    for i, p in enumerate(passages):
        assert p.index == i and text[p.start : p.end] == p.text
        assert 0 < len(p.text) <= max_chars and p.text == p.text.strip()
        # Never mid-word: a passage begins and ends on a word boundary of the document.
        for edge in (p.start, p.end):
            if 0 < edge < len(text):
                assert not (
                    text[edge - 1].isalnum() and text[edge].isalnum() and not CJK.match(text[edge])
                ), text[edge - 10 : edge + 10]
    assert [p.start for p in passages] == sorted(p.start for p in passages)
    # Nothing but whitespace is lost between passages.
    covered = "".join(text[a.end : b.start] for a, b in itertools.pairwise(passages))
    assert not covered.strip()
    assert words  # real text
    return [p.text for p in passages]


def test_long_english_answers_split_into_passages_within_the_limit_never_mid_word(shared_data):
    doc = "\n\n".join(long_answers(shared_data))
    for limit in (300, 800, 2000):
        texts = check_split(doc, limit)
        assert len(texts) > len(doc) // limit // 2
        # Paragraph-aware: passages end where a paragraph or a sentence ends, unless one is too long.
        passages = split_passages(doc, max_chars=limit)
        at_break = [
            p
            for p in passages
            if p.end == len(doc) or doc[p.end : p.end + 2] == "\n\n" or doc[p.end - 1] in ".!?:"
        ]
        assert len(at_break) >= 0.8 * len(passages), (limit, len(at_break), len(passages))


def test_chinese_answers_split_by_characters_at_sentence_ends(shared_data):
    doc = "\n\n".join(belle_answers(shared_data))
    texts = check_split(doc, 200)
    assert all(len(t) <= 200 for t in texts)
    cut_inside = [t for t in texts if len(t) > 150]
    assert (
        cut_inside
        and sum(t[-1] in "。！？；）”" or t[-1].isascii() for t in cut_inside) >= len(cut_inside) * 0.8
    )


def test_a_short_document_is_one_passage_and_a_word_longer_than_the_limit_is_cut():
    assert [p.text for p in split_passages("  One short paragraph.  \n", max_chars=100)] == [
        "One short paragraph."
    ]
    blob = "x" * 250
    texts = [p.text for p in split_passages(f"see {blob} end", max_chars=100)]
    assert "".join(texts).replace(" ", "") == f"see{blob}end" and all(len(t) <= 100 for t in texts)


def test_documents_read_from_text_jsonl_and_json_with_a_chosen_field(shared_data):
    answers = long_answers(shared_data, 3)
    assert read_documents("\n\n".join(answers).encode(), filename="notes.md")[0].name == "notes.md"
    jsonl = "\n".join(json.dumps({"id": f"d{i}", "body": a}) for i, a in enumerate(answers)).encode()
    docs = read_documents(jsonl, filename="docs.jsonl", text_field="body")
    assert [d.name for d in docs] == ["d0", "d1", "d2"] and [d.text for d in docs] == answers
    docs = read_documents(json.dumps([{"text": a} for a in answers]).encode(), filename="docs.json")
    assert [d.line for d in docs] == [1, 2, 3]


@pytest.mark.parametrize(
    ("data", "filename", "message"),
    [
        (b'{"text": "ok"}\n{"text": 3}\n', "d.jsonl", 'line 2: field "text": expected a string'),
        (b'{"text": "ok"}\n\n{"body": "x"}\n', "d.jsonl", 'line 3: field "text": missing'),
        (b'{"text": "ok"}\n{"text": \n', "d.jsonl", "line 2: not valid JSON"),
        (b'[{"text": "ok"}, 5]', "d.json", "item 2: expected an object"),
        (b"fine\nline two \xff\xfe\n", "d.txt", "line 2: not valid UTF-8"),
        (b"a\nb\n\x00", "d.txt", "line 3: holds a NUL"),
        (b"   \n\n ", "d.txt", "holds no text"),
    ],
)
def test_bad_documents_are_refused_naming_the_line(data, filename, message):
    with pytest.raises(FormatError) as info:
        read_documents(data, filename=filename)
    assert message in str(info.value)


def test_parse_instruction_strips_what_teachers_wrap_around_it():
    assert parse_instruction("Instruction: Explain tides.") == "Explain tides."
    assert parse_instruction('"Explain tides."') == "Explain tides."
    assert parse_instruction("Here is the instruction:\n\nExplain tides.") == "Explain tides."
    assert parse_instruction("指令：介绍潮汐。") == "介绍潮汐。"
    assert parse_instruction("```\nExplain tides.\n```") == "Explain tides."
    assert parse_instruction("") == parse_instruction("```\n```") == parse_instruction("x" * 5000) == ""
    assert parse_instruction("```") == parse_instruction("...") == ""


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher.start() as fake:
        yield fake


def run(
    fake: FakeTeacher, items: list[BacktranslateItem], params: BacktranslateParams
) -> list[BacktranslateResult]:
    out: list[BacktranslateResult] = []

    async def main() -> None:
        async with Gateway(teacher_for(fake)) as gateway:
            await run_backtranslate(gateway=gateway, items=items, params=params, emit=out.extend)

    asyncio.run(main())
    return out


@pytest.mark.parametrize("language", ["en", "zh"])
def test_pairs_at_or_above_the_threshold_are_kept_the_others_rejected_with_a_reason(
    server, shared_data, language
):
    server.reset()
    texts = long_answers(shared_data, 30) if language == "en" else belle_answers(shared_data, 30)
    items = [BacktranslateItem(f"rec:{i}", t[:1500]) for i, t in enumerate(texts)]
    results = run(server, items, BacktranslateParams(language=language, threshold=4))
    assert [r.key for r in results] == [i.key for i in items]
    kept = [r for r in results if r.status == "kept"]
    assert kept and len(kept) < len(results)
    for r in kept:
        assert r.score is not None and r.score >= 4 and r.instruction and r.rationale is not None
        assert r.reason is None and not r.instruction.lower().startswith("instruction")
        assert bool(CJK.search(r.instruction)) == (language == "zh")
    reasons = {r.reason for r in results if r.status == "rejected"}
    assert "backtranslation_score" in reasons
    assert reasons <= {"backtranslation_score", "backtranslation_no_instruction", "backtranslation_unscored"}
    for r in results:
        if r.reason == "backtranslation_score":
            assert r.score is not None and r.score < 4
        if r.reason in ("backtranslation_no_instruction", "backtranslation_unscored"):
            assert r.score is None  # never a made-up score


def test_cli_backtranslates_a_chinese_jsonl_and_replays_from_its_cache(server, shared_data, tmp_path):
    import argparse

    from app.cli.generate import add_cli

    server.reset()
    docs = tmp_path / "belle.jsonl"
    docs.write_text(
        "\n".join(json.dumps({"answer": t}, ensure_ascii=False) for t in belle_answers(shared_data, 8)),
        encoding="utf-8",
    )
    teachers = tmp_path / "teachers.json"
    teachers.write_text(json.dumps([{"name": "local", "base_url": server.base_url, "model": "fake-teacher"}]))
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out, rejected, cache = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl", tmp_path / "cache.jsonl"
    argv = [
        "generate", "backtranslate", "--input", str(docs), "--text-field", "answer", "--max-chars", "300",
        "--language", "zh", "--teacher", "local", "-o", str(out), "--rejected", str(rejected),
        "--teachers-config", str(teachers), "--cache", str(cache), "--no-progress",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert kept and dropped
    assert all(r["score"] >= 4 and r["instruction"] and len(r["output"]) <= 300 for r in kept)
    assert all(r["reason"] for r in dropped) and {r["document"] for r in kept} <= {
        f"belle.jsonl#{n}" for n in range(1, 9)
    }
    sent, first = server.stats()["requests"], out.read_text()
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert server.stats()["requests"] == sent and out.read_text() == first


def test_cli_refuses_a_bad_document_file_naming_the_line(tmp_path):
    from app.cli import main

    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "fine"}\n{"text": null}\n')
    with pytest.raises(SystemExit) as info:
        main(["generate", "backtranslate", "--input", str(docs), "--teacher", "x", "-o", str(tmp_path / "o")])
    assert 'line 2: field "text": expected a string' in str(info.value.code)
