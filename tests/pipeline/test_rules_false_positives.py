"""False positives of the default rules on real data from shared/data (issue 14 §4), pinned.

Every default rule runs on each source; a record counts as filtered when any rule hits it. Targets, on
human-written records (instruction and answer written by people): no seed task filtered, at most 1 % of
any other source. Sources larger than ``SAMPLE`` records are sampled with a fixed seed, so the test reads
the same records every run (about 10 s). Machine-written sources are reported, not held to a target:
their hits are mostly real defects.

The table in docs/curation.md is this module's output:

    .venv/bin/python -m tests.pipeline.test_rules_false_positives          # the pinned samples
    .venv/bin/python -m tests.pipeline.test_rules_false_positives --full   # every record
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.pipeline.rules import RULES, RuleHit, evaluate

SAMPLE = 1500

Record = tuple[str, str, str | None]  # instruction, input, output (None: a prompt without an answer)


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.open(encoding="utf-8"):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # InstructionWild's user files have a few malformed lines
    return rows


def _seed_tasks(path: Path) -> list[Record]:
    return [(r["instruction"], r["instances"][0]["input"], r["instances"][0]["output"]) for r in _jsonl(path)]


def _alpaca(path: Path, output: str = "output") -> list[Record]:
    return [(r["instruction"], r.get("input") or "", r[output]) for r in json.loads(path.read_text())]


def _t0(folder: Path) -> list[Record]:
    # The 7 TREC templates have an empty completion for every record in this copy (1,400 records, a
    # defect of the file that empty_output rightly reports), so they are left out of the human sample.
    return [
        (r["prompt"], "", r["completion"].removesuffix("<|endoftext|>").strip())
        for path in sorted(folder.glob("*.jsonl"))
        if not path.name.startswith("trec_")
        for r in _jsonl(path)
    ]


def _prompts(paths: list[Path], key: str = "instruction") -> list[Record]:
    return [(r[key], "", None) for path in paths for r in _jsonl(path)]


@dataclass(frozen=True)
class Source:
    name: str
    language: str
    kind: str  # "human" (held to the target), "prompts" (human prompts, no answer), "machine"
    load: Callable[[Path], list[Record]]


SOURCES = [
    Source("self-instruct seed tasks", "en", "human", lambda d: _seed_tasks(d / "self-instruct/seed_tasks.jsonl")),
    Source("BELLE zh seed tasks", "zh", "human", lambda d: _seed_tasks(d / "belle/zh_seed_tasks.json")),
    Source(
        "self-instruct user-oriented",
        "en",
        "human",
        lambda d: _seed_tasks(d / "self-instruct/user_oriented_instructions.jsonl"),
    ),
    Source("GSM8K (AlpacaDataCleaned)", "en", "human", lambda d: _alpaca(d / "alpacadatacleaned/gsm_8k_train.json")),
    Source("T0 templates (no TREC)", "en", "human", lambda d: _t0(d / "self-instruct/t0_train_50k")),
    Source(
        "pCLUE",
        "zh",
        "human",
        lambda d: [(r["input"], "", r["target"]) for r in _jsonl(d / "pclue/pCLUE_train_9.json")],
    ),
    Source("WizardLM test set", "en", "prompts", lambda d: _prompts([d / "wizardlm/WizardLM_testset.jsonl"], "Instruction")),
    Source(
        "MT-bench",
        "en",
        "prompts",
        lambda d: [(r["turns"][0], "", None) for r in _jsonl(d / "fastchat/mt_bench_question.jsonl")],
    ),
    Source(
        "InstructionWild en",
        "en",
        "prompts",
        lambda d: _prompts(
            [d / "instructionwild" / f for f in ("seed_prompts_en.jsonl", "user_1.jsonl", "user_2.jsonl", "user_3.jsonl")]
        ),
    ),
    Source("InstructionWild zh", "zh", "prompts", lambda d: _prompts([d / "instructionwild/seed_prompts_ch.jsonl"])),
    Source(
        "AlpacaEval (text-davinci-003 answers)",
        "en",
        "machine",
        lambda d: [
            (r["instruction"], "", r["output"])
            for r in json.loads((d / "alpaca_eval/text_davinci_003.model_outputs.json").read_text())
        ],
    ),
    Source(
        "BELLE eval set",
        "zh",
        "machine",
        # Open classes (generation, rewrite, brainstorming) have no reference answer: prompts there.
        lambda d: [(r["question"], "", r["std_answer"] or None) for r in _jsonl(d / "belle/eval_set.json")],
    ),
    Source("BELLE dev1K", "zh", "machine", lambda d: [(r["instruction"], r["input"], r["output"]) for r in _jsonl(d / "belle/dev1K.json")]),
    Source(
        "Alpaca-zh (translated)",
        "zh",
        "machine",
        lambda d: [rec for part in ("00", "01") for rec in _alpaca(d / f"alpaca-chinese-dataset/zh-data-part-{part}.json")],
    ),
    Source("Code Alpaca 2k", "en", "machine", lambda d: _alpaca(d / "codealpaca/code_alpaca_2k.json")),
    Source("GPTeacher codegen", "en", "machine", lambda d: _alpaca(d / "gpteacher/codegen-instruct.json", "response")),
    Source(
        "GPTeacher roleplay",
        "en",
        "machine",
        lambda d: _alpaca(d / "gpteacher/roleplay-simple-deduped-roleplay-instruct.json", "response"),
    ),
    Source(
        "GPTeacher toolformer",
        "en",
        "machine",
        lambda d: _alpaca(d / "gpteacher/toolformer-dedupe-only-dataset.json", "response"),
    ),
]  # fmt: skip


@dataclass(frozen=True)
class Measured:
    source: Source
    total: int
    filtered: int
    per_rule: Counter[str]
    hits: list[tuple[Record, list[RuleHit]]]


def measure(source: Source, data: Path, *, full: bool = False) -> Measured:
    records = source.load(data)
    if not full and len(records) > SAMPLE:
        records = random.Random(f"{source.name}:{len(records)}").sample(records, SAMPLE)
    per_rule: Counter[str] = Counter()
    hits = []
    for instruction, input_, output in records:
        found = evaluate(instruction=instruction, input=input_, output=output, language=source.language)
        per_rule.update({h.code for h in found})
        if found:
            hits.append(((instruction, input_, output), found))
    return Measured(source, len(records), len(hits), per_rule, hits)


@pytest.fixture(scope="module")
def measured(shared_data) -> dict[str, Measured]:
    return {s.name: measure(s, shared_data) for s in SOURCES if s.kind != "machine"}


def test_no_human_seed_task_is_filtered_by_any_default_rule(measured):
    for name in ("self-instruct seed tasks", "BELLE zh seed tasks"):
        m = measured[name]
        assert m.total == 175
        assert m.hits == [], [(r[0][:80], [h.detail for h in hits]) for r, hits in m.hits]


def test_at_most_one_percent_of_human_written_records_is_filtered(measured):
    for source in SOURCES:
        if source.kind != "human":
            continue
        m = measured[source.name]
        assert m.total >= 175
        assert m.filtered <= 0.01 * m.total, (source.name, m.filtered, m.total, dict(m.per_rule))


def test_human_prompts_pass_the_instruction_rules_but_self_instructs_length_cap_and_template_slots(measured):
    """Prompts without answers are checked as a generated instruction is (output=None), where Self-Instruct's
    150-word cap applies by design; InstructionWild's "[insert code here]" templates are real placeholders.
    Apart from those, at most 1 % of human prompts may be filtered."""
    for source in SOURCES:
        if source.kind != "prompts":
            continue
        m = measured[source.name]
        other = [
            hits
            for _, hits in m.hits
            if any(
                h.code != "instruction_length" and not (h.code == "placeholder" and "'[insert'" in h.detail)
                for h in hits
            )
        ]
        assert len(other) <= 0.01 * m.total, (source.name, len(other), m.total, dict(m.per_rule))


def test_the_trec_records_left_out_of_t0_are_real_defects_the_rules_catch(shared_data):
    trec = [
        json.loads(line)
        for path in sorted((shared_data / "self-instruct/t0_train_50k").glob("trec_*.jsonl"))
        for line in path.open()
    ]
    assert len(trec) == 1400
    assert all(
        "empty_output"
        in {
            h.code
            for h in evaluate(instruction=r["prompt"], output=r["completion"].removesuffix("<|endoftext|>"))
        }
        for r in trec
    )


def table(data: Path, *, full: bool) -> str:
    """The markdown table of docs/curation.md: rows are sources, columns rules, cells hits (and %)."""
    codes = list(RULES)
    short = {code: code.replace("_", " ") for code in codes}
    lines = [
        "| Source | Lang | Written by | Records | Filtered (any rule) | "
        + " | ".join(short[c] for c in codes)
        + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(codes),
    ]
    kinds = {
        "human": "people",
        "prompts": "people (prompts only)",
        "machine": "a model (at least the answers)",
    }
    for source in SOURCES:
        m = measure(source, data, full=full)
        cells = [f"{m.per_rule[c]}" if m.per_rule[c] else "·" for c in codes]
        lines.append(
            f"| {source.name} | {source.language} | {kinds[source.kind]} | {m.total} | "
            f"{m.filtered} ({m.filtered / m.total:.2%}) | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    print(table(root.parent / "shared" / "data", full="--full" in sys.argv[1:]))
