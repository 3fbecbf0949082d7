"""Decontamination: which records of a dataset copy prompts of an evaluation set.

A record copies an evaluation prompt when the two share a run of `ngram` tokens (13 words by default, the
GPT-3 / LLaMA practice; each CJK character is one token, as in ROUGE), or when its ROUGE-L with the prompt
is at least `threshold`. The ROUGE-L is exact, found with the dedup index. Each copy is filtered with
reason `contaminated` and the prompt it copies. A person's decision stands (DESIGN rule 7): on records a
person decided, the verdict is advice. The job's result lists every leaked evaluation prompt with its
copies, so a win in an evaluation can be checked for a leak.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from app.curation.jobs import human_first, text_of
from app.curation.schemas import DecontaminateParams
from app.curation.verdicts import Verdict, apply_verdicts
from app.datasets.models import Dataset
from app.errors import Invalid
from app.jobs.context import JobContext
from app.records.models import Record

REASON = "contaminated"
MAX_LISTED = 500  # leaked prompts listed in the job's result; the counters count them all
PROMPT_CHARS = 300


@dataclass
class EvalSet:
    """The evaluation prompts, their n-grams and a ROUGE-L index over them."""

    ngram: int
    threshold: float
    ngram_cjk: int = 0  # the window for texts mostly in CJK characters; 0: the same as ngram
    labels: list[str] = field(default_factory=list)  # "record 12" / "snapshot 3 record 12", by position
    texts: list[str] = field(default_factory=list)
    shingles: dict[tuple[str, ...], int] = field(default_factory=dict)  # first prompt holding each n-gram
    index: Any = None

    def add(self, label: str, text: str) -> None:
        from app.pipeline.rouge import NearDuplicateIndex, tokenize

        if self.index is None:
            self.index = NearDuplicateIndex(threshold=self.threshold)
        position = len(self.texts)
        self.labels.append(label)
        self.texts.append(text)
        for gram in self._grams(tokenize(text)):
            self.shingles.setdefault(gram, position)
        self.index.add(str(position), text)

    def match(self, text: str) -> dict[str, Any] | None:
        """The evaluation prompt `text` copies, how and how closely; None for a clean text."""
        from app.pipeline.rouge import tokenize

        for gram in self._grams(tokenize(text)):
            position = self.shingles.get(gram)
            if position is not None:
                return self._hit(position, "ngram", 1.0, " ".join(gram))
        if self.index is None or not text.strip():
            return None
        score, key = self.index.nearest(text)
        if key is None or score < self.threshold:
            return None
        return self._hit(int(key), "rouge_l", score, None)

    def _grams(self, tokens: list[str]) -> Iterator[tuple[str, ...]]:
        """The text's n-grams. A CJK character is one token but carries less than an English word: a text
        mostly in CJK characters uses the longer `ngram_cjk` window, or shared template phrases
        ("分类为垃圾邮件或非垃圾邮件", 13 characters) would read as copies."""
        cjk = sum(1 for t in tokens if len(t) == 1 and _is_cjk(t))
        n = self.ngram_cjk if self.ngram_cjk and 2 * cjk > len(tokens) else self.ngram
        return _ngrams(tokens, n)

    def _hit(self, position: int, method: str, score: float, shared: str | None) -> dict[str, Any]:
        hit: dict[str, Any] = {
            "method": method,
            "eval": self.labels[position],
            "eval_prompt": self.texts[position][:PROMPT_CHARS],
            "score": round(score, 6),
        }
        if shared is not None:
            hit["shared"] = shared
        return hit


def _is_cjk(char: str) -> bool:
    return "\u3040" <= char <= "\u9fff" or "\uac00" <= char <= "\ud7af" or "\uf900" <= char <= "\ufaff"


def _ngrams(tokens: list[str], n: int) -> Iterator[tuple[str, ...]]:
    for i in range(len(tokens) - n + 1):
        yield tuple(tokens[i : i + n])


def load_eval_set(ctx: JobContext, params: DecontaminateParams) -> EvalSet:
    """The evaluation prompts of the job's source, which must be in the job's project and not its dataset."""
    from app.snapshots.models import Snapshot
    from app.snapshots.service import iter_contents

    evals = EvalSet(ngram=params.ngram, threshold=params.threshold, ngram_cjk=params.ngram_cjk)
    with ctx.session() as db:
        if params.eval_snapshot_id is not None:
            snapshot = db.get(Snapshot, params.eval_snapshot_id)
            source = db.get(Dataset, snapshot.dataset_id) if snapshot is not None else None
            what = f"snapshot {params.eval_snapshot_id}"
        else:
            source = db.get(Dataset, params.eval_dataset_id)
            what = f"dataset {params.eval_dataset_id}"
        # Like mix, this job reads only inside its project: its creator was authorised for that project.
        if source is None or source.project_id != ctx.project_id:
            raise Invalid(f"evaluation {what} is not in this project", field="params")
        if params.eval_dataset_id is not None and source.id == ctx.dataset:
            raise Invalid("the evaluation set cannot be the dataset being decontaminated", field="params")
        if params.eval_snapshot_id is not None:
            for content in iter_contents(db, params.eval_snapshot_id):
                text = text_of(
                    "instruction_input", content["instruction"], content["input"], content["messages"]
                )
                evals.add(f"snapshot {params.eval_snapshot_id} record {content['record_id']}", text)
        else:
            rows = db.execute(
                select(Record.id, Record.instruction, Record.input, Record.messages)
                .where(Record.dataset_id == source.id)
                .order_by(Record.id)
            )
            for rid, instruction, input_, messages in rows:
                evals.add(f"record {rid}", text_of("instruction_input", instruction, input_, messages))
    if not evals.texts:
        raise Invalid(f"evaluation {what} has no prompts", field="params")
    return evals


def run_decontaminate_job(ctx: JobContext) -> None:
    from app.curation.jobs import count_scope

    params = DecontaminateParams.model_validate(ctx.params)
    evals = load_eval_set(ctx, params)
    total = count_scope(ctx, ctx.dataset, params.scope)
    counters: dict[str, Any] = {
        "eval_prompts": len(evals.texts),
        "scanned": 0,
        "contaminated": 0,
        "by_ngram": 0,
        "by_rouge_l": 0,
        "human_advised": 0,
    }
    leaks: dict[str, dict[str, Any]] = {}  # eval label -> the prompt and the records copying it
    ctx.progress(0, total, counters=counters)
    for batch in human_first(ctx, ctx.dataset, params.scope, params.override_human):
        verdicts: list[Verdict] = []
        for rid, instruction, input_, output, messages, _meta, _human in batch:
            counters["scanned"] += 1
            hit = evals.match(text_of(params.field, instruction, input_, messages, output))
            if hit is None:
                continue  # clean: nothing to write
            counters["contaminated"] += 1
            counters["by_ngram" if hit["method"] == "ngram" else "by_rouge_l"] += 1
            leak = leaks.setdefault(
                hit["eval"], {"eval": hit["eval"], "eval_prompt": hit["eval_prompt"], "copies": []}
            )
            leak["copies"].append({"record_id": rid, **_brief(hit)})
            verdicts.append(_verdict(rid, hit))
        with ctx.session() as db:
            applied = apply_verdicts(
                db, "decontaminate", verdicts, job_id=ctx.job_id, override_human=params.override_human
            )
        counters["human_advised"] += applied.advised
        ctx.progress(counters["scanned"], total, counters=counters)
    counters["eval_prompts_leaked"] = len(leaks)
    listed = list(leaks.values())[:MAX_LISTED]
    ctx.set_result({**counters, "leaks": listed, "leaks_listed": len(listed)})


def _brief(hit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hit.items() if k in ("method", "score", "shared")}


def _verdict(rid: int, hit: dict[str, Any]) -> Verdict:
    how = f"shares “{hit['shared']}”" if hit["method"] == "ngram" else f"ROUGE-L {hit['score']:.3f}"
    return Verdict(
        record_id=rid,
        filter_reason=REASON,
        meta={"decontaminate": hit},
        detail=f"copies evaluation prompt ({hit['eval']}): {how}",
    )
