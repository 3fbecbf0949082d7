"""Self-Instruct end to end against the fake teacher, plus the instance filters and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections import Counter
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import pytest

from app.cli.generate import add_cli
from app.pipeline.instances import Instance, filter_instances, parse_output_first
from app.pipeline.llm import Gateway, InMemoryCache, ResponseCache, TeacherUnavailable
from app.pipeline.rouge import rouge_l
from app.pipeline.self_instruct import (
    GenEvent,
    GenRecord,
    SeedTask,
    SelfInstructParams,
    SelfInstructResult,
    estimate_self_instruct_cost,
    load_seed_tasks,
    run_self_instruct,
)
from tests.fake_teacher import FakeTeacher, teacher_for

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SEEDS_FILE = SHARED_DATA / "self-instruct" / "seed_tasks.jsonl"

ZH_SEEDS = [
    "给出三个保持健康作息的建议。",
    "把下面的句子翻译成英文。",
    "解释什么是通货膨胀，并举一个生活中的例子。",
    "写一首描写秋天落叶的五言绝句。",
    "判断下面这条评论是正面还是负面。",
    "为一家新开的面包店写一句广告语。",
    "总结下面这段新闻的主要内容。",
    "列出去海边旅行需要准备的物品。",
    "用简单的语言向小学生介绍太阳系。",
    "比较猫和狗作为宠物的优缺点。",
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher.start() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTeacher) -> FakeTeacher:
    server.reset()
    server.set_latency(0)
    return server


@pytest.fixture(scope="module")
def seeds() -> list[SeedTask]:
    return load_seed_tasks(SEEDS_FILE)


def generate(
    fake: FakeTeacher,
    seeds: list[SeedTask],
    params: SelfInstructParams,
    *,
    cache: ResponseCache | None = None,
    stop_after_rounds: int | None = None,
    **teacher_kw: object,
) -> tuple[SelfInstructResult, list[GenRecord]]:
    events: list[GenEvent] = []

    async def main() -> SelfInstructResult:
        async with Gateway(teacher_for(fake, **teacher_kw), cache=cache) as gateway:
            return await run_self_instruct(
                gateway=gateway,
                seeds=seeds,
                params=params,
                emit=events.append,
                should_stop=lambda: stop_after_rounds is not None and len(events) >= stop_after_rounds,
            )

    result = asyncio.run(main())
    return result, [r for e in events for r in e.records]


def test_seed_file_is_read_with_classification_flags(seeds: list[SeedTask]) -> None:
    assert len(seeds) == 175
    assert sum(s.is_classification for s in seeds) == 26
    assert len({s.key for s in seeds}) == 175


def test_generation_reaches_the_target_and_every_rejection_has_a_reason(
    fake: FakeTeacher, seeds: list[SeedTask]
) -> None:
    result, records = generate(fake, seeds, SelfInstructParams(target=60, batch_size=6))
    assert result.stop_reason == "target"
    kept = [r for r in records if r.status == "kept"]
    assert len({r.instruction for r in kept}) == result.kept_tasks == 60
    assert len({r.key for r in records}) == len(records), "keys must be unique for idempotent upserts"
    for record in records:
        if record.status == "rejected":
            assert record.reason, record
    dups = [r for r in records if r.reason == "rouge_dup"]
    assert dups, "the fake teacher repeats in-context examples: some must be caught"
    for dup in dups:
        assert dup.metadata["rouge_l"] > 0.7 and dup.metadata["nearest"]
    rule_rejected = {r.reason for r in records if r.status == "rejected"} - {"rouge_dup"}
    assert rule_rejected & {"blacklist", "instruction_length"}, rule_rejected
    # No two kept instructions, nor a kept one and a seed, are near duplicates.
    texts = sorted({r.instruction for r in kept})
    assert all(rouge_l(a, b) <= 0.7 for a, b in combinations(texts, 2))
    seed_texts = [s.instruction for s in seeds]
    assert all(rouge_l(t, s) <= 0.7 for t in texts for s in seed_texts)
    assert all(r.teacher_model == "fake-teacher" and r.source == "self_instruct" for r in records)


def test_rerun_with_the_same_cache_sends_no_request_and_emits_identical_records(
    fake: FakeTeacher, seeds: list[SeedTask]
) -> None:
    cache = InMemoryCache()
    params = SelfInstructParams(target=30, batch_size=4, seed=7)
    _, first = generate(fake, seeds, params, cache=cache)
    sent = fake.stats()["requests"]
    _, second = generate(fake, seeds, params, cache=cache)
    assert fake.stats()["requests"] == sent
    assert second == first


def test_interrupted_run_resumes_without_repeating_paid_calls(
    fake: FakeTeacher, seeds: list[SeedTask]
) -> None:
    cache = InMemoryCache()
    params = SelfInstructParams(target=40, batch_size=2, seed=3)
    partial_result, partial = generate(fake, seeds, params, cache=cache, stop_after_rounds=2)
    assert partial_result.stop_reason == "stopped" and partial_result.kept_tasks < 40
    _, resumed = generate(fake, seeds, params, cache=cache)
    assert resumed[: len(partial)] == partial
    stats = fake.stats()
    assert max(stats["completed_by_hash"].values()) == 1, "a paid call was repeated"
    _, fresh = generate(fake, seeds, params)
    assert resumed == fresh, "resuming must give exactly what an uninterrupted run gives"


def test_truncated_last_item_is_not_used(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    fake.script_response(
        "Come up with a series of tasks",
        "9. Describe the migration route of arctic terns to a geography class.\n"
        "10. Invent a board game that teaches children about photosynthesis.\n"
        "11. Summarize the causes of the",
        finish_reason="length",
    )
    _, records = generate(fake, seeds, SelfInstructParams(target=2, batch_size=1))
    instructions = {r.instruction for r in records}
    assert "Invent a board game that teaches children about photosynthesis." in instructions
    assert not any(i.startswith("Summarize the causes") for i in instructions)


def test_output_first_for_classification_tasks(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    _, records = generate(fake, seeds, SelfInstructParams(target=80, batch_size=8, max_instances_per_task=4))
    classification = [r for r in records if r.is_classification and r.status == "kept"]
    assert classification, "the fake teacher writes some classification tasks"
    by_task: dict[str, list[GenRecord]] = {}
    for record in classification:
        by_task.setdefault(record.instruction, []).append(record)
    for task, instances in by_task.items():
        assert all(r.output == r.label and r.input for r in instances), task
        counts = Counter(r.label for r in instances)
        surplus = Counter(
            r.label for r in records if r.instruction == task and r.reason == "instance_over_limit"
        )
        # The teacher writes 3 examples for its first label and 1-2 for the others: a label may only
        # fall more than one behind the largest when it has no example left to give.
        for label, n in counts.items():
            if n < max(counts.values()) - 1:
                assert surplus[label] == 0, (task, counts, surplus)
        for label in surplus:
            assert counts[label] >= max(counts.values()) - 1, (task, counts, surplus)
        assert set(counts) <= set(instances[0].metadata["labels"])
    over = [r for r in records if r.is_classification and r.reason == "instance_over_limit"]
    assert over, "unbalanced surplus examples are rejected with their reason"


def test_input_first_for_ordinary_tasks(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    _, records = generate(fake, seeds, SelfInstructParams(target=40, batch_size=6))
    ordinary = [r for r in records if r.is_classification is False and r.status == "kept"]
    assert ordinary
    assert all(r.label is None and r.output for r in ordinary)
    with_input = [r for r in ordinary if r.input]
    assert with_input and len(with_input) < len(ordinary), "some tasks need an input, others do not"


def test_legacy_completions_teacher_continues_the_list(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    result, records = generate(fake, seeds, SelfInstructParams(target=15, batch_size=4), api="completions")
    assert result.kept_tasks == 15
    assert not any(re.match(r"^\d+[.)]", r.instruction) for r in records)


def test_chinese_run_produces_chinese_instructions_that_dedup_catches(fake: FakeTeacher) -> None:
    zh_seeds = [SeedTask(instruction=t, key=f"zh:{n}") for n, t in enumerate(ZH_SEEDS)]
    result, records = generate(fake, zh_seeds, SelfInstructParams(target=40, batch_size=6, language="zh"))
    assert result.kept_tasks == 40
    kept = sorted({r.instruction for r in records if r.status == "kept"})
    assert all(re.search(r"[\u4e00-\u9fff]", t) for t in kept)
    dups = [r for r in records if r.reason == "rouge_dup"]
    assert dups
    assert all(d.metadata["rouge_l"] > 0.7 for d in dups)
    assert all(rouge_l(a, b) <= 0.7 for a, b in combinations(kept, 2))
    outputs = [r.output for r in records if r.status == "kept"]
    assert all(re.search(r"[\u4e00-\u9fff]", o) for o in outputs), "Chinese prompts get Chinese answers"


def test_teacher_outage_raises_unavailable(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    fake.fault(503, count=10_000)
    with pytest.raises(TeacherUnavailable):
        generate(fake, seeds, SelfInstructParams(target=5, batch_size=2), max_retries=1, breaker_failures=2)


def test_budget_reached_returns_budget_stop_reason(fake: FakeTeacher, seeds: list[SeedTask]) -> None:
    events: list[GenEvent] = []

    async def main() -> tuple[SelfInstructResult, float]:
        teacher = teacher_for(fake, price_in_per_1k=1.0, price_out_per_1k=1.0)
        async with Gateway(teacher, budget_usd=30.0) as gateway:
            result = await run_self_instruct(
                gateway=gateway,
                seeds=seeds,
                params=SelfInstructParams(target=1000, batch_size=4),
                emit=events.append,
            )
            return result, gateway.spent_usd

    result, spent = asyncio.run(main())
    assert result.stop_reason == "budget" and "budget" in result.message
    assert spent <= 30.0
    assert 0 < result.kept_tasks < 1000


def test_instance_filters_follow_the_reference() -> None:
    decisions = filter_instances(
        [
            Instance("same", "same"),
            Instance("x", ""),
            Instance("y", "Here is the list:"),
            Instance("a", "1"),
            Instance("a", "1"),
            Instance("b", "2"),
            Instance("c", "3"),
            Instance("d", "4"),
        ],
        max_per_task=3,
        classification=False,
    )
    assert [d.reason for d in decisions] == [
        "instance_input_equals_output",
        "instance_empty_output",
        "instance_incomplete",
        None,
        "instance_duplicate",
        None,
        None,
        "instance_over_limit",
    ]


def test_same_input_with_different_outputs_drops_all_of_the_task() -> None:
    decisions = filter_instances(
        [Instance("2+2", "4"), Instance("3+3", "6"), Instance("2+2", "5")],
        max_per_task=5,
        classification=False,
    )
    assert [d.reason for d in decisions] == ["instance_conflicting_outputs"] * 3


def test_classification_instances_are_balanced_across_labels() -> None:
    labels, instances = parse_output_first(
        "Class labels: Spam, Not spam\nClass label: Spam\nInput: WIN A PRIZE\nClass label: Spam\nInput: Cheap pills\n"
        "Class label: Spam\nInput: Click here\nClass label: Not spam\nInput: Lunch at noon?\n"
        "Class label: Not spam\nInput: Minutes attached\n\nTask: another task"
    )
    assert labels == ["Spam", "Not spam"]
    kept = [
        d.instance
        for d in filter_instances(instances, max_per_task=4, classification=True)
        if d.reason is None
    ]
    assert Counter(i.label for i in kept) == {"Spam": 2, "Not spam": 2}


def test_cli_writes_kept_records_and_replays_from_its_cache(fake: FakeTeacher, tmp_path: Path) -> None:
    teachers = tmp_path / "teachers.json"
    teachers.write_text(json.dumps([{"name": "local", "base_url": fake.base_url, "model": "fake-teacher"}]))
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers())
    out, rejected, cache = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl", tmp_path / "cache.jsonl"
    argv = [
        "generate", "self-instruct", "--seeds", str(SEEDS_FILE), "--teacher", "local", "-n", "12",
        "-o", str(out), "--rejected", str(rejected), "--teachers-config", str(teachers),
        "--cache", str(cache), "--no-progress",
    ]  # fmt: skip
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["instruction"] for r in rows}) == 12
    assert all(r["status"] == "kept" and r["output"] for r in rows)
    assert all(json.loads(line)["reason"] for line in rejected.read_text().splitlines())
    sent = fake.stats()["requests"]
    first_output = out.read_text()
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert fake.stats()["requests"] == sent
    assert out.read_text() == first_output


def test_cost_estimate_from_a_dry_run_is_close_and_reused_by_the_job(
    fake: FakeTeacher, seeds: list[SeedTask]
) -> None:
    cache = InMemoryCache()
    teacher = teacher_for(fake, price_in_per_1k=1.0, price_out_per_1k=2.0)
    params = SelfInstructParams(target=60, batch_size=6, seed=5)

    async def main() -> tuple[float, float, int]:
        async with Gateway(teacher, cache=cache) as gateway:
            estimate = await estimate_self_instruct_cost(gateway=gateway, seeds=seeds, params=params)
            await run_self_instruct(gateway=gateway, seeds=seeds, params=params, emit=lambda e: None)
            return estimate.cost_usd, gateway.spent_usd, estimate.calls

    estimated, spent, calls = asyncio.run(main())
    assert calls > 60
    assert 0.5 * spent < estimated < 2 * spent, (estimated, spent)
    assert max(fake.stats()["completed_by_hash"].values()) == 1, "the job paid again for a dry-run call"
