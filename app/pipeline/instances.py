"""Instance synthesis for Self-Instruct: prompts, parsing of the teacher's examples, and the reference filters.

Ordinary tasks are generated **input-first** (an input, then its output; or the output alone when the
task needs no input). Classification tasks are generated **output-first**: the teacher lists the class
labels, then writes an input for each label, so that labels stay balanced instead of following the
teacher's favourite class.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from app.pipeline.prompts import render_prompt

Language = Literal["en", "zh"]


@dataclass(frozen=True)
class Instance:
    input: str
    output: str
    label: str | None = None


@dataclass(frozen=True)
class InstanceDecision:
    instance: Instance
    reason: str | None
    """None: kept; otherwise why it was dropped."""


def instance_prompt(instruction: str, *, classification: bool, language: Language = "en") -> str:
    name = "instances_output_first" if classification else "instances_input_first"
    return render_prompt(name, language, instruction=instruction)


# The few-shot prompts end with "Task: <instruction>": a completion model often carries on with the next
# "Task:" of its own invention, which is not part of this task's examples.
_NEXT_TASK = re.compile(r"^\s*(?:Task|任务)\s*[:：]", re.MULTILINE | re.IGNORECASE)
_EXAMPLE_HEADER = re.compile(
    r"^\s*(?:\*\*)?(?:Example|示例|例子)\s*\d+\s*(?:\*\*)?\s*[:：]?\s*$", re.I | re.M
)
_FIELD = re.compile(
    r"^\s*(?:\*\*)?(?P<name>Input|Output|输入|输出|Class labels?|类别标签)(?:\*\*)?\s*[:：](?:\*\*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)


def _cut_next_task(text: str) -> str:
    match = _NEXT_TASK.search(text)
    return text[: match.start()] if match else text


def _fields(block: str) -> list[tuple[str, str]]:
    """(field name normalised to input/output/label/labels, value) in order of appearance."""
    matches = list(_FIELD.finditer(block))
    fields: list[tuple[str, str]] = []
    for idx, match in enumerate(matches):
        end = matches[idx + 1].start() if idx + 1 < len(matches) else len(block)
        value = block[match.end() : end].strip()
        name = match.group("name").lower()
        if name in ("input", "输入"):
            kind = "input"
        elif name in ("output", "输出"):
            kind = "output"
        elif name == "class labels" or (
            name == "类别标签" and idx == 0 and any(sep in value for sep in ",，、")
        ):
            kind = "labels"
        else:
            kind = "label"
        fields.append((kind, value))
    return fields


def parse_input_first(text: str, *, truncated: bool = False) -> list[Instance]:
    """Instances from an input-first answer ("Example 1 / Input: / Output:", or just "Output:")."""
    body = _cut_next_task(text).strip()
    if not body:
        return []
    blocks = [b for b in _EXAMPLE_HEADER.split(body) if b.strip()]
    instances: list[Instance] = []
    for block in blocks:
        fields = _fields(block)
        if not fields:
            continue
        current_input = ""
        for kind, value in fields:
            if kind == "input":
                current_input = value
            elif kind == "output":
                instances.append(Instance(input=current_input, output=value))
                current_input = ""
    if not instances and not _FIELD.search(body):
        # A teacher that answered the task directly: the answer is the output of an input-less instance.
        instances.append(Instance(input="", output=body))
    if truncated and instances:
        instances.pop()
    return instances


def _split_labels(value: str) -> list[str]:
    return [label.strip().strip(".。") for label in re.split(r"[,，、/]| or |或", value) if label.strip()]


def parse_output_first(text: str, *, truncated: bool = False) -> tuple[list[str], list[Instance]]:
    """(declared class labels, instances) from an output-first answer; each instance's output is its label."""
    body = _cut_next_task(text).strip()
    labels: list[str] = []
    instances: list[Instance] = []
    current: str | None = None
    current_has_input = False

    def close_label() -> None:
        # "If the task doesn't require input, just generate the correct class label."
        if current is not None and not current_has_input:
            instances.append(Instance(input="", output=current, label=current))

    for kind, value in _fields(body):
        if kind == "labels":
            labels = _split_labels(value)
        elif kind == "label":
            close_label()
            current = value.splitlines()[0].strip().strip(".。") if value else ""
            current_has_input = False
            if current and current not in labels:
                labels.append(current)
        elif kind == "input" and current is not None:
            instances.append(Instance(input=value, output=current, label=current))
            current_has_input = True
    close_label()
    if truncated and instances:
        instances.pop()
    return labels, instances


def _ends_incomplete(text: str) -> bool:
    return text.rstrip().endswith((":", "："))


def filter_instances(
    instances: list[Instance], *, max_per_task: int, classification: bool
) -> list[InstanceDecision]:
    """The reference's instance filters: one decision per instance, in the given order.

    At most ``max_per_task`` are kept; for classification tasks they are picked round-robin across labels
    so the classes stay balanced.
    """
    cleaned = [Instance(i.input.strip(), i.output.strip(), i.label) for i in instances]
    reasons: list[str | None] = [None] * len(cleaned)
    for n, inst in enumerate(cleaned):
        if not inst.output:
            reasons[n] = "instance_empty_output"
        elif inst.input == inst.output:
            reasons[n] = "instance_input_equals_output"
        elif _ends_incomplete(inst.input) or _ends_incomplete(inst.output):
            reasons[n] = "instance_incomplete"

    outputs_by_input: dict[str, set[str]] = defaultdict(set)
    for n, inst in enumerate(cleaned):
        if reasons[n] is None and inst.input:
            outputs_by_input[inst.input].add(inst.output)
    if any(len(outs) > 1 for outs in outputs_by_input.values()):
        # The same input with different outputs means the teacher is unsure: none of them can be trusted.
        reasons = [r or "instance_conflicting_outputs" for r in reasons]
        return [InstanceDecision(i, r) for i, r in zip(cleaned, reasons, strict=True)]

    seen: set[tuple[str, str]] = set()
    for n, inst in enumerate(cleaned):
        if reasons[n] is None:
            if (inst.input, inst.output) in seen:
                reasons[n] = "instance_duplicate"
            seen.add((inst.input, inst.output))

    survivors = [n for n, r in enumerate(reasons) if r is None]
    if classification:
        chosen = set(_round_robin_by_label([(n, cleaned[n]) for n in survivors], max_per_task))
    else:
        chosen = set(survivors[:max_per_task])
    for n in survivors:
        if n not in chosen:
            reasons[n] = "instance_over_limit"
    return [InstanceDecision(i, r) for i, r in zip(cleaned, reasons, strict=True)]


def _round_robin_by_label(instances: list[tuple[int, Instance]], limit: int) -> list[int]:
    by_label: dict[str, list[int]] = {}
    for n, inst in instances:
        by_label.setdefault(inst.label or inst.output, []).append(n)
    queues = list(by_label.values())
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < limit:
                chosen.append(queue[depth])
        depth += 1
    return chosen
