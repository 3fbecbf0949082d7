"""The dataset card: `README.md` of an export bundle, in the Hugging Face Hub's shape.

YAML front matter (dumped with yaml.safe_dump, so a dataset name or a licence string from an imported file
cannot break out of it) that the Hub reads (license, language, task categories, size, the split files),
then what a person needs to trust the data: counts, lengths, the jobs that made it with their parameters and
teachers, licences found in the sources, decontamination, and the snapshot's hash. User text in the body is
HTML-escaped and kept out of Markdown syntax, since the Hub renders the card.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

# The Hub's size_categories bins (upper bounds, exclusive).
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))


@dataclass(frozen=True)
class CardInfo:
    """What a card says, gathered by the service from the snapshot, its dataset and its jobs."""

    title: str
    description: str
    language: str
    fmt: str
    snapshot: Mapping[str, Any]  # id, name, content_hash, created_at, record_count, filter
    stats: Mapping[str, Any]  # app.snapshots.service.compute_stats of the exported records
    lengths: Mapping[str, Mapping[str, float]]  # length_summary of prompt and response characters
    jobs: Sequence[Mapping[str, Any]]  # id, kind, status, params, teacher {name, model} | None
    licenses: Mapping[str, int]  # licence field of the source rows -> records
    val_fraction: float = 0.0
    seed: int = 0
    # Decontaminate jobs' findings: job, against, ngram, threshold, eval_prompts, scanned, contaminated,
    # by_ngram, by_rouge_l, eval_prompts_leaked, exported_contaminated.
    evaluations: Sequence[Mapping[str, Any]] = field(default_factory=list)


def size_category(n: int) -> str:
    for bound, label in _SIZES:
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def length_summary(values: Sequence[int]) -> dict[str, float]:
    """min, median, mean, p90 and max of a list of lengths (zeros for none)."""
    if not values:
        return {"min": 0, "median": 0, "mean": 0, "p90": 0, "max": 0}
    ordered = sorted(values)
    n = len(ordered)
    return {
        "min": ordered[0],
        "median": ordered[n // 2],
        "mean": round(sum(ordered) / n, 1),
        "p90": ordered[min(n - 1, math.ceil(0.9 * n) - 1)],
        "max": ordered[-1],
    }


def license_id(licenses: Mapping[str, int]) -> str:
    """The Hub's `license`: the one licence the sources name, `other` for several, `unknown` for none."""
    if len(licenses) == 1:
        return next(iter(licenses)).strip().lower()
    return "other" if licenses else "unknown"


def text(value: Any) -> str:
    """User text as inline Markdown: escaped HTML, one line, no table breaks."""
    return html.escape(" ".join(str(value).split())).replace("|", "\\|").replace("`", "&#96;")


def _code(value: Any) -> str:
    # In a fenced block nothing is rendered; only a run of backticks could end it, and JSON can carry
    # them escaped.
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=1).replace("`", "\\u0060")


def _table(title: str, counts: Mapping[str, Any], total: int) -> list[str]:
    if not counts:
        return [f"**{title}**: none recorded.", ""]
    lines = [f"| {title} | records | share |", "|---|---:|---:|"]
    for key, n in sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0]))):
        share = f"{100 * int(n) / total:.1f}%" if total else "-"
        lines.append(f"| {text(key)} | {int(n)} | {share} |")
    return [*lines, ""]


def _front_matter(info: CardInfo, files: Mapping[str, str], total: int) -> str:
    meta: dict[str, Any] = {
        "pretty_name": info.title,
        "license": license_id(info.licenses),
        "language": [info.language],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(total)],
        "tags": ["instruction-tuning", "instructforge", info.fmt],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": path} for split, path in files.items()],
            }
        ],
    }
    if len(info.licenses) > 1:
        meta["license_name"] = "several-see-licences-section"  # the Hub wants a slug here
    return "---\n" + yaml.safe_dump(meta, allow_unicode=True, sort_keys=False) + "---\n"


def _jobs(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    if not jobs:
        return [
            "No generation or curation job ran on this dataset: its records were imported or written.",
            "",
        ]
    lines = ["| job | kind | status | teacher |", "|---|---|---|---|"]
    for job in jobs:
        teacher = job.get("teacher")
        who = f"{text(teacher['name'])} (`{text(teacher['model'])}`)" if teacher else "-"
        lines.append(f"| #{job['id']} | {text(job['kind'])} | {text(job['status'])} | {who} |")
    lines += ["", "Their parameters:", "", "```json"]
    lines += [_code({str(job["id"]): job.get("params", {}) for job in jobs}), "```", ""]
    return lines


def _loading(
    info: CardInfo, files: Mapping[str, str], parquet: bool, llamafactory_name: str | None
) -> list[str]:
    builder = "parquet" if parquet else "json"
    data_files = ", ".join(f'"{split}": "{path}"' for split, path in files.items())
    lines = [
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("{builder}", data_files={{{data_files}}})',
        "```",
        "",
    ]
    if llamafactory_name:
        lines += [
            "LLaMA-Factory: put this folder's `dataset_info.json` and `data/` in its `dataset_dir` and train with "
            f"`dataset: {llamafactory_name}`.",
            "",
        ]
    if info.fmt in ("openai", "dpo"):
        lines += [
            "TRL: the rows are in TRL's conversational format; pass the dataset to the trainer as it is.",
            "",
        ]
    if info.fmt == "dpo_plain":
        lines += ["TRL: the rows are in TRL's standard (plain text) preference format.", ""]
    if info.fmt == "axolotl":
        lines += ["Axolotl: `type: chat_template` with `field_messages: conversations`.", ""]
    return lines


def dataset_card(
    info: CardInfo,
    *,
    files: Mapping[str, str],
    counts: Mapping[str, int],
    parquet: bool,
    llamafactory_name: str | None,
) -> str:
    total = sum(counts.values())
    snap = info.snapshot
    stats = info.stats
    out = [_front_matter(info, files, total), f"# {text(info.title)}", ""]
    if info.description.strip():
        out += [text(info.description), ""]
    out += [
        "Exported by InstructForge from an immutable snapshot: the same hash always means the same records.",
        "",
        "## Snapshot",
        "",
        f"- snapshot: #{snap['id']} {text(snap['name'])}, created {text(snap['created_at'])}",
        f"- content hash (SHA-256): `{text(snap['content_hash'])}`",
        f"- records: {total} in format `{info.fmt}`"
        + (", as Parquet with each record's id and provenance" if parquet else ""),
        "- splits: "
        + ", ".join(f"{split} {counts[split]} (`{path}`)" for split, path in files.items())
        + (f"; validation fraction {info.val_fraction}, seed {info.seed}" if info.val_fraction else ""),
        f"- which records: `{text(json.dumps(snap.get('filter') or {}, sort_keys=True))}`",
        "",
        "## Contents",
        "",
    ]
    out += _table("source", stats.get("by_source", {}), total)
    out += _table("status", stats.get("by_status", {}), total)
    out += _table("label", stats.get("by_label", {}), total)
    out += ["Lengths in characters (prompt: instruction and input, or the user turns):", ""]
    out += ["| | min | median | mean | p90 | max |", "|---|---:|---:|---:|---:|---:|"]
    for name, summary in info.lengths.items():
        figures = " | ".join(str(summary[k]) for k in ("min", "median", "mean", "p90", "max"))
        out.append(f"| {text(name)} | {figures} |")
    out += ["", "## How it was made", ""]
    out += _jobs(info.jobs)
    out += ["## Decontamination", ""]
    if info.evaluations:
        for ev in info.evaluations:
            out.append(
                f"- decontaminate job #{ev['job']} against {text(ev['against'])} (shared {ev['ngram']}-token runs "
                f"or ROUGE-L ≥ {ev['threshold']}): {ev['scanned']} records scanned, {ev['contaminated']} copied "
                f"{ev['eval_prompts_leaked']} of its {ev['eval_prompts']} prompts ({ev['by_ngram']} by n-gram, "
                f"{ev['by_rouge_l']} by ROUGE-L) and were filtered as `contaminated`; "
                f"{ev['exported_contaminated']} records in this export still carry that verdict."
            )
        out.append("")
    else:
        out += [
            "No decontaminate job ran on this dataset before the snapshot: there are no decontamination "
            "results, and nothing shows the data is free of benchmark prompts.",
            "",
        ]
    out += ["## Licences", ""]
    if info.licenses:
        out += ["Licence fields found in the source rows:", ""]
        out += _table("licence", info.licenses, total)
        unnamed = total - sum(info.licenses.values())
        if unnamed > 0:
            out += [f"{unnamed} records carry no licence field; check their sources before you publish.", ""]
    else:
        out += [
            "No source row carried a licence field: check the licences of the sources and of the teachers' "
            "terms before you publish.",
            "",
        ]
    out += ["## Loading", ""]
    out += _loading(info, files, parquet, llamafactory_name)
    return "\n".join(out)
