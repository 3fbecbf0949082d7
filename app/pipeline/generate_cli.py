"""`instructforge generate self-instruct | evol | judge`: the generation pipelines without the service."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from app.pipeline.evol import ALL_OPERATIONS, EvolParams, evol_items_from_records, run_evol
from app.pipeline.judge import JudgeItem, JudgeParams, JudgeResult, run_judge
from app.pipeline.llm import (
    CallRecord,
    Gateway,
    JsonlFileCache,
    ResponseCache,
    TeacherConfig,
    TeacherUnavailable,
    load_teachers,
    run_coroutine,
)
from app.pipeline.self_instruct import GenEvent, SelfInstructParams, load_seed_tasks, run_self_instruct

EXIT_BUDGET = 3
EXIT_TEACHER_UNAVAILABLE = 2


def add_cli(subparsers: Any) -> None:
    gen = subparsers.add_parser("generate", help="Generate data with a teacher LLM (no service needed).")
    sub = gen.add_subparsers(dest="generate_command", required=True)

    si = sub.add_parser("self-instruct", help="Self-Instruct from seed tasks.")
    si.add_argument(
        "--seeds", required=True, help="Seed tasks: Self-Instruct seed JSONL or Alpaca JSON/JSONL."
    )
    si.add_argument("-n", "--num", type=int, default=100, help="Tasks to keep (default 100).")
    si.add_argument("--batch-size", type=int, default=8, help="Instruction prompts per round.")
    si.add_argument("--max-instances", type=int, default=3, help="Instances kept per task (K).")
    si.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L F duplicate threshold.")
    _common(si)
    si.set_defaults(func=cmd_self_instruct)

    ev = sub.add_parser("evol", help="Evol-Instruct over Alpaca-style records.")
    ev.add_argument("--input", required=True, help="Alpaca-style JSON/JSONL (instruction, input, output).")
    ev.add_argument("--rounds", type=int, default=4)
    ev.add_argument("--operations", default=",".join(ALL_OPERATIONS), help="Comma-separated operations.")
    _common(ev)
    ev.set_defaults(func=cmd_evol)

    jd = sub.add_parser("judge", help="Score records 1-5 with an LLM judge (Alpagasus-style).")
    jd.add_argument("--input", required=True, help="Alpaca-style JSON/JSONL (instruction, input, output).")
    jd.add_argument("--threshold", type=float, default=4.5)
    jd.add_argument("--rubric", default=None, help="A file with the curator's rubric.")
    _common(jd)
    jd.set_defaults(func=cmd_judge)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="Teacher name from the teachers config.")
    p.add_argument("-o", "--output", required=True, help="JSONL file for the kept records.")
    p.add_argument("--rejected", default=None, help="JSONL file for the rejected records, with reasons.")
    p.add_argument("--teachers-config", default=None, help="YAML/JSON teachers file (default: IF_TEACHERS).")
    p.add_argument("--cache", default=None, help="JSONL response cache: re-runs and replays pay nothing.")
    p.add_argument("--language", choices=["en", "zh"], default="en")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=None, help="Hard budget in USD.")
    p.add_argument("--concurrency", type=int, default=None, help="Override the teacher's max concurrency.")
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")


def _teacher(args: argparse.Namespace) -> TeacherConfig:
    source = args.teachers_config
    if not source:
        from app.config import get_settings

        source = get_settings().teachers
    teachers = load_teachers(source or "")
    if args.teacher not in teachers:
        known = ", ".join(sorted(teachers)) or "none configured (see docs/teachers.md)"
        raise SystemExit(f"error: unknown teacher {args.teacher!r}; known: {known}")
    teacher = teachers[args.teacher]
    if args.concurrency:
        teacher = teacher.model_copy(update={"max_concurrency": args.concurrency})
    return teacher


def _read_rows(path: str) -> list[dict[str, Any]]:
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows: list[dict[str, Any]] = json.loads(text)
        return rows
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _Writer:
    def __init__(self, kept: str, rejected: str | None) -> None:
        self._kept: TextIO = open(kept, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._rejected: TextIO | None = open(rejected, "w", encoding="utf-8") if rejected else None  # noqa: SIM115

    def write(self, rows: Iterable[tuple[bool, dict[str, Any]]]) -> None:
        for kept, row in rows:
            fh = self._kept if kept else self._rejected
            if fh is not None:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._kept.flush()

    def close(self) -> None:
        self._kept.close()
        if self._rejected:
            self._rejected.close()


class _Costs:
    def __init__(self) -> None:
        self.cost = 0.0
        self.calls = 0
        self.cached = 0

    def __call__(self, call: CallRecord) -> None:
        self.cost += call.cost_usd
        self.calls += 0 if call.cached else 1
        self.cached += 1 if call.cached else 0


def _run(
    args: argparse.Namespace,
    total: int,
    unit: str,
    body: Callable[[Gateway, Callable[[int, int], None], _Writer], Any],
) -> int:
    teacher = _teacher(args)
    cache: ResponseCache | None = JsonlFileCache(args.cache) if args.cache else None
    costs = _Costs()
    writer = _Writer(args.output, args.rejected)
    bar = tqdm(total=total, unit=unit, disable=args.no_progress, file=sys.stderr)

    def progress(done: int, rejected: int) -> None:
        bar.update(done - bar.n)
        bar.set_postfix(rejected=rejected, calls=costs.calls, cached=costs.cached, usd=f"{costs.cost:.4f}")

    async def main() -> Any:
        async with Gateway(teacher, cache=cache, on_call=costs, budget_usd=args.budget) as gateway:
            return await body(gateway, progress, writer)

    try:
        result = run_coroutine(main())
    except TeacherUnavailable as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_TEACHER_UNAVAILABLE
    finally:
        bar.close()
        writer.close()
    print(
        f"{result}\ncalls: {costs.calls} paid, {costs.cached} from cache, ${costs.cost:.4f}", file=sys.stderr
    )
    if getattr(result, "stop_reason", "") == "budget":
        print(f"stopped: {result.message}", file=sys.stderr)
        return EXIT_BUDGET
    return 0


def _gen_rows(event: GenEvent) -> list[tuple[bool, dict[str, Any]]]:
    return [(r.status == "kept", r.to_dict()) for r in event.records]


def cmd_self_instruct(args: argparse.Namespace) -> int:
    seeds = load_seed_tasks(args.seeds)
    params = SelfInstructParams(
        target=args.num,
        batch_size=args.batch_size,
        max_instances_per_task=args.max_instances,
        threshold=args.threshold,
        language=args.language,
        seed=args.seed,
    )

    async def body(gateway: Gateway, progress: Callable[[int, int], None], writer: _Writer) -> Any:
        def emit(event: GenEvent) -> None:
            writer.write(_gen_rows(event))
            progress(event.progress.kept, event.progress.records_rejected)

        return await run_self_instruct(gateway=gateway, seeds=seeds, params=params, emit=emit)

    return _run(args, args.num, "task", body)


def cmd_evol(args: argparse.Namespace) -> int:
    items = evol_items_from_records(_read_rows(args.input))
    ops = [op.strip() for op in args.operations.split(",") if op.strip()]
    params = EvolParams.model_validate(
        {"rounds": args.rounds, "operations": ops, "language": args.language, "seed": args.seed}
    )

    async def body(gateway: Gateway, progress: Callable[[int, int], None], writer: _Writer) -> Any:
        def emit(event: GenEvent) -> None:
            writer.write(_gen_rows(event))
            progress(event.progress.kept + event.progress.records_rejected, event.progress.records_rejected)

        return await run_evol(gateway=gateway, items=items, params=params, emit=emit)

    return _run(args, len(items) * args.rounds, "evolution", body)


def cmd_judge(args: argparse.Namespace) -> int:
    rows = _read_rows(args.input)
    items = [
        JudgeItem(
            key=str(row.get("key") or row.get("id") or n),
            instruction=str(row.get("instruction", "")),
            input=str(row.get("input", "")),
            output=str(row.get("output", "")),
        )
        for n, row in enumerate(rows)
    ]
    rubric = Path(args.rubric).read_text(encoding="utf-8") if args.rubric else None
    params = JudgeParams(threshold=args.threshold, rubric=rubric, language=args.language)
    by_key = {item.key: row for item, row in zip(items, rows, strict=True)}
    seen = {"done": 0, "rejected": 0}

    async def body(gateway: Gateway, progress: Callable[[int, int], None], writer: _Writer) -> Any:
        def emit(results: list[JudgeResult]) -> None:
            out = []
            for r in results:
                row = {
                    **by_key[r.key],
                    "judge_score": r.score,
                    "judge_rationale": r.rationale,
                    "reason": r.reason,
                }
                out.append((r.status == "kept", row))
                seen["rejected"] += r.status != "kept"
            seen["done"] += len(results)
            writer.write(out)
            progress(seen["done"], seen["rejected"])

        return await run_judge(gateway=gateway, items=items, params=params, emit=emit)

    return _run(args, len(items), "record", body)
