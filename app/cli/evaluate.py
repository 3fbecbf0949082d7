"""`instructforge eval`: an evaluation without the service. Prompts file in, answers + verdicts JSONL out.

Each system answers every prompt (base models and training runs through `python -m trainer.answer`, in a
child process as the gpu worker runs it; teachers through the gateway), then the judge compares every
pair in both orders (app.pipeline.pairwise). The output has the same lines as the service's export
(docs/evaluation.md), and a summary table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from app.cli.output import Row, add_output_options, summary
from app.evaluation.prompts import SetPrompt, set_prompt
from app.pipeline import pairwise as pw
from app.pipeline.llm import (
    BudgetExceeded,
    Gateway,
    JsonlFileCache,
    ResponseCache,
    Sampling,
    TeacherConfig,
    TeacherUnavailable,
    load_teachers,
    run_coroutine,
)
from trainer.contract import ANSWER_SPEC_FILE, ANSWERS_FILE, EXIT_OK, TRAIN_CONFIG_FILE

EXIT_BUDGET = 3
EXIT_TEACHER_UNAVAILABLE = 2
EXIT_GENERATOR_FAILED = 4


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "eval",
        help="compare systems on a prompt set with a teacher as judge, without the service",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "prompts", help="the prompt set: a file in any import format (MT-Bench, BELLE eval, alpaca...)"
    )
    p.add_argument(
        "--format",
        default="auto",
        help="the prompts file's format (alpaca, sharegpt, openai, dolly, self_instruct, mt_bench, belle_eval; "
        "default: %(default)s, detected)",
    )
    p.add_argument("--max-prompts", type=int, default=None, help="only the first N prompts (default: all)")
    p.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="MODEL",
        help="a base model folder as a system (repeatable); a name is looked up under --models-dir",
    )
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="ARTIFACTS_DIR",
        help="a training run's folder (adapter/, prompt_format.json, train_config.yaml) as a system (repeatable)",
    )
    p.add_argument(
        "--teacher",
        action="append",
        default=[],
        metavar="NAME",
        help="a teacher endpoint as a system, e.g. to show the ceiling (repeatable)",
    )
    p.add_argument("--judge", required=True, help="the judge: a teacher name from the teachers config")
    p.add_argument("-o", "--output", required=True, help="JSONL file: systems, prompts, answers and verdicts")
    p.add_argument(
        "--models-dir", default=None, help="where --base names are looked up (default: IF_MODELS_DIR)"
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="the generator's spec and answer files, one folder per system; a re-run resumes from them "
        "(default: OUTPUT.work)",
    )
    p.add_argument(
        "--teachers-config",
        default=None,
        help="YAML/JSON teachers file, or inline JSON (default: IF_TEACHERS; see docs/teachers.md)",
    )
    p.add_argument("--cache", default=None, help="JSONL response cache: a re-run pays for no call twice")
    p.add_argument("--rubric", default=None, help="a text file whose content replaces the judge's rubric")
    p.add_argument(
        "--scores", action="store_true", help="also score every answer 1-10 (MT-Bench single mode)"
    )
    p.add_argument(
        "--no-reference", action="store_true", help="do not show the judge the prompts' reference answers"
    )
    p.add_argument(
        "--language",
        choices=["en", "zh"],
        default="en",
        help="the judge prompts' language (default: %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="judge comparisons in flight (default: the judge's max_concurrency)",
    )
    p.add_argument(
        "--budget", type=float, default=None, help="hard budget in USD for teacher calls (default: none)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="answer length limit (default: %(default)s)"
    )
    p.add_argument("--sample", action="store_true", help="sample answers instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="with --sample (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.9, help="with --sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="generation and bootstrap seed (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="prompts generated together (default: %(default)s)"
    )
    add_output_options(p)
    p.set_defaults(func=cmd_eval)


class CliError(Exception):
    """A problem with the command's inputs, printed as `error: ...` (exit status 1)."""


def load_prompts(path: Path, fmt: str, limit: int | None) -> list[SetPrompt]:
    from app.pipeline.formats import FormatError, parse_all

    try:
        records, _ = parse_all(path.read_bytes(), fmt=fmt, filename=path.name)
    except FormatError as exc:
        raise CliError(f"{path}: {exc}") from exc
    prompts = []
    for i, r in enumerate(records, start=1):
        row: dict[str, Any] = {"instruction": r.instruction, "input": r.input, "output": r.output}
        row.update(messages=r.messages, system=r.system, label=r.label)
        prompt = set_prompt(str(i), row)
        if prompt is not None:
            prompts.append(prompt)
    if not prompts:
        raise CliError(f"{path}: no prompts")
    return prompts[:limit] if limit else prompts


def _teachers(args: argparse.Namespace) -> dict[str, TeacherConfig]:
    source = args.teachers_config
    if not source:
        from app.config import get_settings

        source = get_settings().teachers
    try:
        return load_teachers(source or "")
    except ValueError as exc:
        raise CliError(f"teachers config: {exc}") from exc


def _systems(args: argparse.Namespace, known: dict[str, TeacherConfig]) -> list[dict[str, Any]]:
    """(name, kind, base model folder, adapter folder, teacher) per system, checked before anything runs."""
    systems: list[dict[str, Any]] = []
    models_dir = Path(args.models_dir) if args.models_dir else None
    for base in args.base:
        path = Path(base)
        if not path.is_dir() and models_dir is None:
            from app.config import get_settings

            models_dir = get_settings().models_dir
        folder = path if path.is_dir() else (models_dir or Path()) / base
        if not (folder / "config.json").is_file():
            raise CliError(f"--base {base}: not a Hugging Face model folder ({folder})")
        systems.append(
            {"name": f"base {folder.name}", "kind": "base", "model": folder.resolve(), "adapter": None}
        )
    for run in args.run:
        folder = Path(run)
        config_file = folder / TRAIN_CONFIG_FILE
        if not config_file.is_file():
            raise CliError(f"--run {run}: no {TRAIN_CONFIG_FILE} (not a training run's folder)")
        config = yaml.safe_load(config_file.read_text()) or {}
        model = Path(str(config.get("base_model", "")))
        if not (model / "config.json").is_file():
            raise CliError(f"--run {run}: its base model {model} is not on this machine")
        systems.append(
            {"name": f"run {folder.name}", "kind": "run", "model": model.resolve(), "adapter": folder}
        )
    for name in args.teacher:
        if name not in known:
            raise CliError(f"--teacher {name}: unknown teacher; known: {', '.join(sorted(known)) or 'none'}")
        systems.append({"name": f"teacher {name}", "kind": "teacher", "teacher": name})
    if len(systems) < 2:
        raise CliError("give at least two systems (--base, --run, --teacher)")
    names = [s["name"] for s in systems]
    if len(set(names)) != len(names):
        raise CliError(f"two systems have the same name: {names}")
    return systems


def _generate_local(
    system: dict[str, Any], prompts: list[SetPrompt], work: Path, args: argparse.Namespace
) -> dict[str, str]:
    out = work / system["name"].replace(" ", "-").replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    prompts_path = out / "prompts.jsonl"
    prompts_path.write_text(
        "".join(
            json.dumps({"id": p.prompt_id, "messages": p.messages}, ensure_ascii=False) + "\n"
            for p in prompts
        ),
        encoding="utf-8",
    )
    spec = {
        "base_model": system["model"].name,
        "models_dir": str(system["model"].parent),
        "adapter_dir": str(system["adapter"]) if system["adapter"] else None,
        "prompts_path": str(prompts_path),
        "output_dir": str(out),
        "max_new_tokens": args.max_new_tokens,
        "greedy": not args.sample,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "val_path": None,
    }
    (out / ANSWER_SPEC_FILE).write_text(json.dumps(spec, indent=2))
    with (out / "answer.log").open("ab") as log:
        code = subprocess.call(
            [sys.executable, "-m", "trainer.answer", str(out / ANSWER_SPEC_FILE)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if code != EXIT_OK:
        raise CliError(f"the generator for {system['name']} exited with {code}; see {out / 'answer.log'}")
    answers: dict[str, str] = {}
    for line in (out / ANSWERS_FILE).read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            answers[str(item["id"])] = str(item.get("answer") or "")
    return answers


async def _generate_teacher(
    gateway: Gateway, prompts: list[SetPrompt], args: argparse.Namespace
) -> dict[str, str]:
    sampling = Sampling(
        temperature=args.temperature if args.sample else 0.0,
        top_p=args.top_p if args.sample else None,
        max_tokens=args.max_new_tokens,
    )
    done = await asyncio.gather(
        *(gateway.complete(p.messages, purpose="eval_answer", sampling=sampling) for p in prompts)
    )
    return {p.prompt_id: c.text for p, c in zip(prompts, done, strict=True)}


def _summary_rows(report: pw.PairwiseReport) -> list[Row]:
    rows: list[Row] = []
    for r in report.win_rates:
        if r.category is not None:
            continue
        ci = f" [{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.ci_low is not None and r.ci_high is not None else ""
        lc = f", length-controlled {r.lc_win_rate:.2f}" if r.lc_win_rate is not None else ""
        rate = f"{r.win_rate:.2f}{ci}{lc}" if r.win_rate is not None else "no decided comparison"
        rows.append(
            (f"{r.system_a} vs {r.system_b}", f"{r.wins}-{r.ties}-{r.losses} (win-tie-loss), win rate {rate}")
        )
    return rows


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        return _eval(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GENERATOR_FAILED if "generator" in str(exc) else 1


def _eval(args: argparse.Namespace) -> int:
    known = _teachers(args)
    if args.judge not in known:
        raise CliError(f"--judge {args.judge}: unknown teacher; known: {', '.join(sorted(known)) or 'none'}")
    systems = _systems(args, known)
    prompts = load_prompts(Path(args.prompts), args.format, args.max_prompts)
    work = Path(args.work_dir) if args.work_dir else Path(f"{args.output}.work")
    cache: ResponseCache | None = JsonlFileCache(args.cache) if args.cache else None
    answers: dict[str, dict[str, str]] = {}
    for system in systems:
        if system["kind"] != "teacher":
            answers[system["name"]] = _generate_local(system, prompts, work, args)
    rubric = Path(args.rubric).read_text(encoding="utf-8") if args.rubric else None
    judging: dict[str, Any] = {
        "rubric": rubric,
        "language": args.language,
        "use_reference": not args.no_reference,
    }
    if args.concurrency:
        judging["batch_size"] = args.concurrency
    pair_verdicts: list[pw.PairVerdict] = []
    score_verdicts: list[pw.ScoreVerdict] = []

    async def main() -> pw.RunSummary:
        for system in systems:
            if system["kind"] == "teacher":
                teacher = known[system["teacher"]]
                async with Gateway(teacher, cache=cache, budget_usd=args.budget) as gateway:
                    answers[system["name"]] = await _generate_teacher(gateway, prompts, args)
        judge = known[args.judge]
        if args.concurrency:
            judge = judge.model_copy(update={"max_concurrency": args.concurrency})
        eval_prompts = _eval_prompts(prompts, answers)
        async with Gateway(judge, cache=cache, budget_usd=args.budget) as gateway:
            run = await pw.run_pairwise(
                gateway=gateway,
                prompts=eval_prompts,
                pairs=pw.all_pairs([s["name"] for s in systems]),
                params=pw.PairwiseParams(**judging),
                emit=pair_verdicts.extend,
            )
            if args.scores and run.stop_reason == "done":
                await pw.run_scoring(
                    gateway=gateway,
                    prompts=eval_prompts,
                    systems=[s["name"] for s in systems],
                    params=pw.ScoreParams(**judging),
                    emit=score_verdicts.extend,
                )
        return run

    try:
        run = run_coroutine(main())
    except TeacherUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TEACHER_UNAVAILABLE
    except BudgetExceeded as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_BUDGET
    eval_prompts = _eval_prompts(prompts, answers)
    report = pw.summarise_pairwise(eval_prompts, pair_verdicts, seed=args.seed)
    results: dict[str, Any] = {
        "pairwise": report.model_dump(mode="json"),
        "judging": run.model_dump(mode="json"),
    }
    if args.scores:
        results["scores"] = [
            s.model_dump(mode="json") for s in pw.summarise_scores(score_verdicts, seed=args.seed)
        ]
    _write(Path(args.output), systems, prompts, answers, pair_verdicts, score_verdicts, results, args)
    rows = _summary_rows(report)
    rows += [("prompts", len(prompts)), ("output", Path(args.output).absolute())]
    data = {
        "command": "eval",
        "prompts": len(prompts),
        "output": str(Path(args.output).absolute()),
        **results,
    }
    summary(title=f"eval: {run.stop_reason}", rows=rows, data=data, as_json=args.json)
    return EXIT_BUDGET if run.stop_reason == "budget" else 0


def _eval_prompts(prompts: list[SetPrompt], answers: dict[str, dict[str, str]]) -> list[pw.EvalPrompt]:
    return [
        pw.EvalPrompt(
            id=p.prompt_id,
            text=p.text,
            category=p.category,
            reference=p.reference,
            answers={name: got[p.prompt_id] for name, got in answers.items() if p.prompt_id in got},
        )
        for p in prompts
    ]


def _write(
    path: Path,
    systems: list[dict[str, Any]],
    prompts: list[SetPrompt],
    answers: dict[str, dict[str, str]],
    pairs: list[pw.PairVerdict],
    scores: list[pw.ScoreVerdict],
    results: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    """The same line types as the service's export (docs/evaluation.md)."""

    def line(obj: dict[str, Any]) -> str:
        return json.dumps(obj, ensure_ascii=False) + "\n"

    with path.open("w", encoding="utf-8") as fh:
        fh.write(
            line(
                {
                    "type": "evaluation",
                    "prompts_file": str(args.prompts),
                    "judge_teacher": args.judge,
                    "results": results,
                }
            )
        )
        for s in systems:
            fh.write(
                line(
                    {
                        "type": "system",
                        "name": s["name"],
                        "kind": s["kind"],
                        "base_model": str(s.get("model")) if s.get("model") else None,
                        "adapter_dir": str(s["adapter"]) if s.get("adapter") else None,
                        "teacher": s.get("teacher"),
                    }
                )
            )
        for p in prompts:
            fh.write(
                line(
                    {
                        "type": "prompt",
                        "prompt_id": p.prompt_id,
                        "text": p.text,
                        "messages": p.messages,
                        "category": p.category,
                        "reference": p.reference,
                    }
                )
            )
        for name, got in answers.items():
            for pid, answer in got.items():
                fh.write(
                    line(
                        {"type": "answer", "system": name, "prompt_id": pid, "answer": answer, "tokens": None}
                    )
                )
        for v in pairs:
            fh.write(line({"type": "verdict", "kind": "pair", "verdict": v.model_dump(mode="json")}))
        for sv in scores:
            fh.write(line({"type": "verdict", "kind": "score", "verdict": sv.model_dump(mode="json")}))
