"""`instructforge generate self-instruct | evol | judge`: the generation pipelines without the service."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from app.cli.output import Progress, Row, add_output_options, reason_rows, summary, wants_progress
from app.pipeline.evol import ALL_OPERATIONS, EvolParams, EvolResult, evol_items_from_records, run_evol
from app.pipeline.judge import JudgeItem, JudgeParams, JudgeResult, JudgeSummary, run_judge
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
from app.pipeline.self_instruct import (
    GenEvent,
    SelfInstructParams,
    SelfInstructResult,
    load_seed_tasks,
    run_self_instruct,
)

EXIT_BUDGET = 3
EXIT_TEACHER_UNAVAILABLE = 2


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `generate self-instruct`, `generate evol` and `generate judge`."""
    gen = subparsers.add_parser(
        "generate",
        help="generate data with a teacher LLM (no service needed)",
        description="Generate data with a teacher LLM, from files to files, without the service. Exit "
        "status: 0 done, 2 teacher unavailable (circuit open), 3 budget reached.",
    )
    sub = gen.add_subparsers(dest="generate_command", required=True)

    si = sub.add_parser(
        "self-instruct",
        help="Self-Instruct from seed tasks",
        description="Self-Instruct (Wang et al., 2023): new tasks from seed tasks, each with its instances, "
        "kept only if no earlier instruction is a near-duplicate (docs/generation.md).",
    )
    si.add_argument(
        "--seeds", required=True, help="seed tasks: Self-Instruct seed JSONL, or Alpaca JSON/JSONL"
    )
    si.add_argument("-n", "--num", type=int, default=100, help="tasks to keep (default: %(default)s)")
    si.add_argument(
        "--batch-size", type=int, default=8, help="instruction prompts per round (default: %(default)s)"
    )
    si.add_argument(
        "--max-instances", type=int, default=3, help="instances kept per task (default: %(default)s)"
    )
    si.add_argument(
        "--threshold",
        type=float,
        default=0.7,
        help="an instruction whose ROUGE-L F with an earlier one is above this is a duplicate "
        "(default: %(default)s)",
    )
    _common(si)
    from app.cli.batch import add_batch_option

    add_batch_option(si, what="the instances stage (each task's classification and instances calls)")
    si.add_argument(
        "--batch-spares",
        type=float,
        default=0.1,
        help="with --batch: spare tasks sent with the instances batches, as a fraction of the tasks still "
        "needed; paid even when unused, they save another pair of batches when tasks fail "
        "(default: %(default)s)",
    )
    si.set_defaults(func=cmd_self_instruct)

    ev = sub.add_parser(
        "evol",
        help="Evol-Instruct over Alpaca-style records",
        description="Evol-Instruct (Xu et al., 2023): rewrite instructions into harder or broader ones, "
        "round after round, and answer them; failed evolutions are rejected with their reason.",
    )
    ev.add_argument("--input", required=True, help="Alpaca-style JSON/JSONL (instruction, input, output)")
    ev.add_argument(
        "--rounds", type=int, default=4, help="evolution rounds over every record (default: %(default)s)"
    )
    ev.add_argument(
        "--operations",
        default=",".join(ALL_OPERATIONS),
        help="comma-separated evolution operations, one drawn per record and round (default: all: "
        "%(default)s)",
    )
    _common(ev)
    ev.set_defaults(func=cmd_evol)

    jd = sub.add_parser(
        "judge",
        help="score records 1-5 with an LLM judge (AlpaGasus-style)",
        description="Score every record 1-5 with the teacher as judge (AlpaGasus-style) and "
        "keep those scoring at least --threshold; the score and rationale are added to each record.",
    )
    jd.add_argument("--input", required=True, help="Alpaca-style JSON/JSONL (instruction, input, output)")
    jd.add_argument(
        "--threshold",
        type=float,
        default=4.5,
        help="keep records scoring at least this, 1-5 (default: %(default)s, as AlpaGasus)",
    )
    jd.add_argument(
        "--rubric", default=None, help="a file with the curator's rubric (default: the built-in 1-5 rubric)"
    )
    _common(jd)
    from app.cli.batch import add_batch_option

    add_batch_option(jd)
    jd.set_defaults(func=cmd_judge)

    from app.cli.backtranslate import add_backtranslate, cmd_backtranslate

    add_backtranslate(sub, _common, cmd_backtranslate)

    from app.cli.rewrite_reasoning import add_rewrite_reasoning

    add_rewrite_reasoning(sub, _common)

    from app.cli.respond import add_respond

    add_respond(sub, _common)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="teacher name from the teachers config")
    p.add_argument("-o", "--output", required=True, help="JSONL file for the kept records")
    p.add_argument("--rejected", default=None, help="JSONL file for the rejected records, with reasons")
    p.add_argument(
        "--teachers-config",
        default=None,
        help="YAML/JSON teachers file, or inline JSON (default: IF_TEACHERS; see docs/teachers.md)",
    )
    p.add_argument(
        "--cache", default=None, help="JSONL response cache: a re-run or replay pays for nothing twice"
    )
    p.add_argument(
        "--language",
        choices=["en", "zh"],
        default="en",
        help="the language of the prompts and of the data (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed: the same seed, inputs and cache give the same output (default: %(default)s)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="hard budget in USD: stop (exit status 3) before spending more (default: none)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="requests in flight at most (default: the teacher's max_concurrency)",
    )
    add_output_options(p)


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
    # True for the passes of --batch that only find the calls still missing: their results count nowhere.
    discards = False

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


class _Discard(_Writer):
    """A writer that writes nothing: the passes of --batch that only find the calls still missing (a
    command's `emit` returns at once on it, so its counters count the real pass alone)."""

    discards = True

    def __init__(self) -> None:
        pass

    def write(self, rows: Iterable[tuple[bool, dict[str, Any]]]) -> None:
        pass

    def close(self) -> None:
        pass


class _Quiet(Progress):
    def __init__(self) -> None:
        super().__init__(label="", unit="", total=None, enabled=False)


class _Costs:
    """Teacher calls and their cost, counted as the gateway reports each one (the bar moves with them)."""

    def __init__(self) -> None:
        self.cost = 0.0
        self.calls = 0
        self.cached = 0
        self.on_change: Callable[[], None] = lambda: None

    def __call__(self, call: CallRecord) -> None:
        self.cost += call.cost_usd
        self.calls += 0 if call.cached else 1
        self.cached += 1 if call.cached else 0
        self.on_change()

    def status(self) -> str:
        cached = f" ({self.cached} cached)" if self.cached else ""
        return f"calls {self.calls}{cached} | ${self.cost:.4f}"


STOP_TEXT = {
    "target": "target reached",
    "done": "done",
    "stopped": "stopped",
    "budget": "budget reached",
    "exhausted": "stopped, nothing new was kept",
}

Body = Callable[[Gateway, Progress, _Writer], Awaitable[Any]]
Summary = tuple[list[Row], dict[str, Any]]


def _run(
    args: argparse.Namespace,
    *,
    command: str,
    total: int,
    unit: str,
    kept_label: str,
    body: Body,
    describe: Callable[[Any], Summary],
    live_costs: _Costs | None = None,
) -> int:
    """Run `body` on a gateway to the teacher with a live bar, then print what `describe` makes of its result.

    ``live_costs``: with --batch, the calls `body` makes live on its own gateway (Self-Instruct's instruction
    rounds), counted in the budget and the summary beside the batches'."""
    teacher = _teacher(args)
    cache: ResponseCache | None = JsonlFileCache(args.cache) if args.cache else None
    costs = _Costs()
    make_gateway: Callable[[], Gateway] = lambda: Gateway(  # noqa: E731
        teacher, cache=cache, on_call=costs, budget_usd=args.budget
    )
    batches = None
    if getattr(args, "batch", False):
        from app.cli.batch import answer_in_batches
        from app.pipeline.llm.batch import BatchGateway

        if not teacher.batch:
            raise SystemExit(f"error: teacher {teacher.name!r} does not offer a batch API (batch: false)")
        if cache is None:
            raise SystemExit("error: --batch needs --cache: the batches' answers are kept there")
        try:
            failed, batches = answer_in_batches(
                teacher=teacher,
                cache=cache,
                cache_path=args.cache,
                budget_usd=args.budget,
                pipeline=lambda gateway: body(gateway, _Quiet(), _Discard()),
                show=not getattr(args, "no_progress", False),
                live=lambda: (live_costs.calls, live_costs.cost) if live_costs else (0, 0.0),
            )
        except KeyboardInterrupt:
            print("interrupted: run the same command with the same --cache to resume", file=sys.stderr)
            return 130
        costs.calls, costs.cost = batches.answered, batches.cost_usd
        if live_costs is not None:
            costs.calls += live_costs.calls
            costs.cost += live_costs.cost
        make_gateway = lambda: BatchGateway(teacher, mode="final", failed=failed, cache=cache)  # noqa: E731
    writer = _Writer(args.output, args.rejected)
    progress = Progress(
        label=command.removeprefix("generate "),
        unit=unit,
        total=total,
        enabled=wants_progress(args),
        kept_label=kept_label,
        extra=costs.status,
    )
    costs.on_change = progress.touch

    async def main() -> Any:
        async with make_gateway() as gateway:
            return await body(gateway, progress, writer)

    try:
        try:
            result = run_coroutine(main())
        finally:
            progress.close()
            writer.close()
    except TeacherUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TEACHER_UNAVAILABLE
    except KeyboardInterrupt:
        print(f"interrupted: the records decided so far are in {args.output}", file=sys.stderr)
        return 130
    rows, data = describe(result)
    stop_reason = str(getattr(result, "stop_reason", "done"))
    message = str(getattr(result, "message", ""))
    rows += [("stopped because", message)] if message else []
    rows += [
        ("teacher calls", f"{costs.calls} paid, {costs.cached} from cache"),
        ("cost", f"${costs.cost:.4f}"),
        ("output", Path(args.output).absolute()),
    ]
    rows += [("rejected records", Path(args.rejected).absolute())] if args.rejected else []
    if batches is not None:
        from app.cli.batch import describe as describe_batches

        rows += [("batch API", describe_batches(batches))]
    data = {
        "command": command,
        **data,
        "calls": costs.calls,
        "cached_calls": costs.cached,
        "cost_usd": round(costs.cost, 6),
        "output": str(Path(args.output).absolute()),
        "rejected_file": str(Path(args.rejected).absolute()) if args.rejected else None,
        **({"batches": [b.batch_id for b in batches.submissions]} if batches is not None else {}),
    }
    title = f"{command}: {STOP_TEXT.get(stop_reason, stop_reason)}"
    summary(title=title, rows=rows, data=data, as_json=args.json)
    if stop_reason == "budget":
        print(f"stopped: {message}", file=sys.stderr)
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
        batch_spares=args.batch_spares,
    )

    # --batch: the instruction rounds answered live on the --cache (paid once, in the passes that find the
    # missing calls), the instances stage through the Batch API (app/pipeline/self_instruct_batch.py).
    live_costs = _Costs() if getattr(args, "batch", False) else None
    if live_costs is not None and args.cache:
        from app.cli.batch import load_live, state_path

        live_costs.calls, live_costs.cost = load_live(state_path(args.cache))  # earlier runs on this cache
    refused: dict[str, str] = {}

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> SelfInstructResult:
        from app.pipeline.llm.batch import BatchGateway
        from app.pipeline.self_instruct_batch import run_self_instruct_batched

        def emit(event: GenEvent) -> None:
            writer.write(_gen_rows(event))
            p = event.progress
            progress.set(done=p.kept, kept=p.records_kept, rejected=p.rejected_by_reason)

        if live_costs is None or not isinstance(gateway, BatchGateway):
            return await run_self_instruct(gateway=gateway, seeds=seeds, params=params, emit=emit)
        budget = None if args.budget is None else max(0.0, args.budget - _batch_cost(args) - live_costs.cost)
        async with Gateway(
            gateway.teacher, cache=gateway.cache, on_call=live_costs, budget_usd=budget
        ) as live:
            return await run_self_instruct_batched(
                gateway=gateway, live=live, seeds=seeds, params=params, emit=emit, refused=refused
            )

    def describe(result: SelfInstructResult) -> Summary:
        rows: list[Row] = [
            ("kept tasks", f"{result.kept_tasks} of {args.num}"),
            ("records kept", result.records_kept),
            ("records rejected", result.records_rejected),
            *reason_rows(result.rejected_by_reason),
            ("rounds", result.rounds),
        ]
        return rows, {**asdict(result), "target": args.num}

    return _run(
        args,
        command="generate self-instruct",
        total=args.num,
        unit="tasks",
        kept_label="records kept",
        body=body,
        describe=describe,
        live_costs=live_costs,
    )


def _batch_cost(args: argparse.Namespace) -> float:
    """What the batches of this --cache have cost so far (their state file beside it)."""
    from app.cli.batch import load_state, state_path

    return load_state(state_path(args.cache))[1].cost_usd


def cmd_evol(args: argparse.Namespace) -> int:
    items = evol_items_from_records(_read_rows(args.input))
    ops = [op.strip() for op in args.operations.split(",") if op.strip()]
    params = EvolParams.model_validate(
        {"rounds": args.rounds, "operations": ops, "language": args.language, "seed": args.seed}
    )

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> EvolResult:
        def emit(event: GenEvent) -> None:
            writer.write(_gen_rows(event))
            p = event.progress
            progress.set(done=p.kept + p.records_rejected, kept=p.kept, rejected=p.rejected_by_reason)

        return await run_evol(gateway=gateway, items=items, params=params, emit=emit)

    def describe(result: EvolResult) -> Summary:
        rows: list[Row] = [
            ("evolutions kept", result.kept),
            ("evolutions rejected", result.rejected),
            *reason_rows(result.rejected_by_reason),
            ("rounds", f"{result.rounds} of {args.rounds}"),
        ]
        return rows, asdict(result)

    return _run(
        args,
        command="generate evol",
        total=len(items) * args.rounds,
        unit="evolutions",
        kept_label="kept",
        body=body,
        describe=describe,
    )


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
    by_reason: Counter[str] = Counter()

    async def body(gateway: Gateway, progress: Progress, writer: _Writer) -> JudgeSummary:
        def emit(results: list[JudgeResult]) -> None:
            if writer.discards:
                return
            out = []
            for r in results:
                row = {
                    **by_key[r.key],
                    "judge_score": r.score,
                    "judge_rationale": r.rationale,
                    "reason": r.reason,
                }
                kept = r.status == "kept"
                out.append((kept, row))
                reason = None if kept else (r.reason or r.status)
                if reason is not None:
                    by_reason[reason] += 1
                progress.record(reason)
            writer.write(out)

        return await run_judge(gateway=gateway, items=items, params=params, emit=emit)

    def describe(result: JudgeSummary) -> Summary:
        mean = "-" if result.mean_score is None else f"{result.mean_score:.2f}"
        table: list[Row] = [
            ("kept", f"{result.kept} (score >= {args.threshold})"),
            ("not kept", result.rejected + result.unscored),
            *reason_rows(by_reason),
            ("mean score", mean),
        ]
        return table, {**asdict(result), "rejected_by_reason": dict(by_reason)}

    return _run(
        args,
        command="generate judge",
        total=len(items),
        unit="records",
        kept_label="kept",
        body=body,
        describe=describe,
    )
