"""Evol-Instruct against the fake teacher: lineage, eliminations with reasons, resumability."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.pipeline.evol import (
    EvolItem,
    EvolParams,
    EvolResult,
    copies_prompt_words,
    is_sorry_short,
    only_punctuation_and_stop_words,
    run_evol,
)
from app.pipeline.llm import Gateway, InMemoryCache, ResponseCache
from app.pipeline.self_instruct import GenEvent, GenRecord, load_seed_tasks
from tests.fake_teacher import FakeTeacher, teacher_for

SEEDS_FILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher.start() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTeacher) -> FakeTeacher:
    server.reset()
    return server


@pytest.fixture(scope="module")
def items() -> list[EvolItem]:
    seeds = load_seed_tasks(SEEDS_FILE)[:40]
    return [EvolItem(s.key, s.instruction, s.instances[0][0], s.instances[0][1]) for s in seeds]


def evolve(
    fake: FakeTeacher, items: list[EvolItem], params: EvolParams, cache: ResponseCache | None = None
) -> tuple[EvolResult, list[GenRecord]]:
    events: list[GenEvent] = []

    async def main() -> EvolResult:
        async with Gateway(teacher_for(fake), cache=cache) as gateway:
            return await run_evol(gateway=gateway, items=items, params=params, emit=events.append)

    result = asyncio.run(main())
    return result, [r for e in events for r in e.records]


def test_each_failed_evolution_is_recorded_with_its_reason(fake: FakeTeacher, items: list[EvolItem]) -> None:
    result, records = evolve(fake, items, EvolParams(rounds=3))
    assert len(records) == len(items) * 3
    reasons = {r.reason for r in records if r.status == "rejected"}
    assert {"no_information_gain", "sorry_short_response", "empty_response", "copied_prompt_words"} <= reasons
    assert result.kept + result.rejected == len(records)
    for r in records:
        if r.reason == "copied_prompt_words":
            assert copies_prompt_words(r.instruction)
        elif r.reason == "sorry_short_response":
            assert is_sorry_short(r.output)
        elif r.reason == "empty_response":
            assert only_punctuation_and_stop_words(r.output)
    kept = [r for r in records if r.status == "kept"]
    assert kept and all(r.output and not copies_prompt_words(r.instruction) for r in kept)


def test_lineage_points_to_the_latest_kept_parent(fake: FakeTeacher, items: list[EvolItem]) -> None:
    _, records = evolve(fake, items, EvolParams(rounds=3))
    latest = {item.key: (item.key, item.instruction) for item in items}
    roots = {item.key for item in items}
    failed_then_retried = 0
    for round_no in range(3):
        for record in [r for r in records if r.round == round_no]:
            root = record.key.split(":", 2)[2]
            assert root in roots and record.key == f"ev:{round_no}:{root}"
            assert record.operation and record.source == f"evol:{record.operation}"
            # A failed evolution's parent went back to the pool: the next round evolves it again.
            assert record.parent_key == latest[root][0]
            if record.parent_key == root and round_no > 0:
                failed_then_retried += 1
        for record in [r for r in records if r.round == round_no and r.status == "kept"]:
            latest[record.key.split(":", 2)[2]] = (record.key, record.instruction)
    assert failed_then_retried > 0


def test_operations_cover_in_depth_and_in_breadth(fake: FakeTeacher, items: list[EvolItem]) -> None:
    _, records = evolve(fake, items, EvolParams(rounds=2))
    ops = {r.operation for r in records}
    assert ops == {"constraints", "deepening", "concretizing", "reasoning", "complicate_input", "breadth"}
    _, only_breadth = evolve(fake, items[:5], EvolParams(rounds=1, operations=["breadth"]))
    assert {r.operation for r in only_breadth} == {"breadth"}


def test_rerun_with_the_same_cache_is_free_and_identical(fake: FakeTeacher, items: list[EvolItem]) -> None:
    cache = InMemoryCache()
    _, first = evolve(fake, items[:10], EvolParams(rounds=2), cache)
    sent = fake.stats()["requests"]
    _, second = evolve(fake, items[:10], EvolParams(rounds=2), cache)
    assert second == first
    assert fake.stats()["requests"] == sent


def test_unchanged_rewrite_is_eliminated_as_no_information_gain(fake: FakeTeacher) -> None:
    item = EvolItem("only", "Name three rivers in Africa and their lengths.")
    fake.script_response("#Given Prompt#", "Name three rivers in Africa and their lengths.")
    _, records = evolve(fake, [item], EvolParams(rounds=1))
    assert records[0].reason == "no_information_gain" and records[0].parent_key == "only"


@pytest.mark.parametrize(
    ("text", "copied"),
    [
        ("#Rewritten Prompt#: List five birds.", True),
        ("Rewrite the given prompt to list birds.", True),
        ("#给定提示#：列出五种鸟。", True),
        ("List five birds that migrate across the Sahara, with one fact each.", False),
    ],
)
def test_copied_prompt_words(text: str, copied: bool) -> None:
    assert copies_prompt_words(text) is copied


def test_sorry_counts_only_when_the_answer_is_short() -> None:
    assert is_sorry_short("Sorry, I cannot help with that.")
    assert is_sorry_short("抱歉，我无法完成这个请求。")
    long_answer = "Sorry for the long answer, but " + "here is a detailed explanation of the topic. " * 12
    assert not is_sorry_short(long_answer)
    assert not is_sorry_short("Here is the answer you asked for.")


def test_only_punctuation_and_stop_words() -> None:
    assert only_punctuation_and_stop_words("the of and to . , ; ...")
    assert only_punctuation_and_stop_words("的 了 和 。 ，……")
    assert only_punctuation_and_stop_words("")
    assert not only_punctuation_and_stop_words("Paris is the capital of France.")
    assert not only_punctuation_and_stop_words("巴黎是法国的首都。")
