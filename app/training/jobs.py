"""The `train` job, run by the gpu worker: export the snapshot, run the trainer in a child process,
stream its metrics into the database, and turn cancel into a CANCEL file the trainer honours."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from app.errors import DomainError, NotFound
from app.jobs.context import JobCancelled, JobContext, JobPaused
from app.pipeline import formats
from app.snapshots.models import Snapshot
from app.snapshots.service import export_records, iter_contents
from app.training.models import TrainingMetric, TrainingRun
from app.training.schemas import TrainingJobParams
from trainer.contract import CANCEL_FILE, EXIT_CANCELLED, EXIT_OK, METRICS_FILE, STATUS_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

POLL_S = 1.0
CANCEL_GRACE_S = 120.0
TRAINER_LOG = "trainer.log"  # the child's stdout and stderr, appended across restarts


def _export(run: TrainingRun, db: Any, path: Path) -> int:
    """The run's snapshot as the trainer reads it (write_dataset)."""
    return write_dataset(
        db, snapshot_id=run.snapshot_id, objective=(run.config or {}).get("objective", "sft"), path=path
    )


def write_dataset(db: Any, *, snapshot_id: int, objective: str, path: Path) -> int:
    """The snapshot as the trainer reads it: its records (SFT), or its preference pairs as the dpo export
    writes them (prompt/chosen/rejected messages) for dpo, orpo, kto and simpo. A run's `dataset.jsonl` and an
    exported launch bundle's (app/training/bundle.py) are both written here."""
    if objective != "sft":
        snap = db.get(Snapshot, snapshot_id)
        records = export_records(db, snap, "dpo")
        write = formats.PAIR_EXPORTERS["dpo"][0]
    else:
        records = list(iter_contents(db, snapshot_id))
        write = formats.write_openai_jsonl
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        write(records, fh)
    tmp.replace(path)  # a crash never leaves a half-written dataset for a resumed run to read
    return len(records)


def _ingest_metrics(ctx: JobContext, run_id: int, path: Path, offset: int) -> tuple[int, int | None]:
    """Store metrics lines appended since `offset`; steps already stored are skipped (re-runs)."""
    if not path.is_file():
        return offset, None
    with path.open("rb") as fh:
        fh.seek(offset)
        chunk = fh.read()
    complete = chunk[: chunk.rfind(b"\n") + 1]
    last_step = None
    if complete:
        with ctx.session() as db:
            known = set(db.scalars(select(TrainingMetric.step).where(TrainingMetric.run_id == run_id)))
            for line in complete.decode("utf-8", "replace").splitlines():
                try:
                    values = json.loads(line)
                except json.JSONDecodeError:
                    continue
                step = int(values.get("step", 0))
                last_step = step
                if step in known:
                    continue
                known.add(step)
                loss = values.get("loss")
                db.add(
                    TrainingMetric(
                        run_id=run_id,
                        step=step,
                        values=values,
                        loss=float(loss) if isinstance(loss, int | float) else None,
                    )
                )
    return offset + len(complete), last_step


def _status(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / STATUS_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def trainer_command(config_path: Path, *, gpus: int) -> list[str]:
    """One process for one GPU; torchrun with one rank per GPU otherwise (the same trainer, trainer/distributed.py).

    `--standalone` gives the ranks a private rendezvous on this machine, so two runs never meet.
    """
    if gpus <= 1:
        return [sys.executable, "-m", "trainer", str(config_path)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
    return [*launcher, "-m", "trainer", str(config_path)]


def _gpus_of(config: dict[str, Any]) -> int:
    """The GPUs a stored run asks for, checked again here: the worker's setting may differ from the web's."""
    from app.config import get_settings

    gpus = int(config.get("gpus") or 1)
    capacity = get_settings().worker_gpus
    if gpus > 1 and gpus > capacity:
        raise DomainError(f"the run asks for {gpus} GPUs, this worker has {capacity} (IF_GPUS_PER_WORKER)")
    return gpus


def run_training_job(ctx: JobContext) -> None:
    """Train, then tell the ablations waiting on this run how it ended (app/evaluation/ablations.py)."""
    run_id = TrainingJobParams.model_validate(ctx.params).run_id
    try:
        _train(ctx)
    except JobCancelled:
        _run_ended(ctx, run_id, "cancelled")
        raise
    except JobPaused:
        raise
    except Exception as exc:
        # Only a domain error's words travel: any other is a fault whose details are for operators.
        _run_ended(ctx, run_id, "failed", exc.message if isinstance(exc, DomainError) else None)
        raise
    _run_ended(ctx, run_id, "succeeded")


def _run_ended(ctx: JobContext, run_id: int, outcome: str, error: str | None = None) -> None:
    """The end-of-run hook: an ablation's evaluation waits (paused, holding no worker) until every one of its
    runs has succeeded, and fails naming the run that did not."""
    from app.evaluation.ablations import training_finished
    from app.jobs import service as jobs
    from app.jobs.models import Job

    try:
        with ctx.session() as db:
            queued = training_finished(db, run_id, outcome, error)
        for job_id in queued:
            with ctx.session() as db:
                job = db.get(Job, job_id)
                if job is not None:
                    jobs.send(db=db, job=job)
    except Exception:  # the run itself is done: a waiting evaluation can be resumed by hand
        log.exception("training run %s: could not tell the evaluations waiting on it", run_id)


def _train(ctx: JobContext) -> None:
    params = TrainingJobParams.model_validate(ctx.params)
    with ctx.session() as db:
        run = db.get(TrainingRun, params.run_id)
        if run is None:
            raise NotFound(f"training run {params.run_id} not found")
        out = Path(run.artifacts_dir)
        out.mkdir(parents=True, exist_ok=True)
        data_path = out / "dataset.jsonl"
        if not data_path.is_file():
            _export(run, db, data_path)
        config = dict(run.config)
        run_id = run.id
    config.update(dataset_path=str(data_path), output_dir=str(out), resume=True)
    gpus = _gpus_of(config)
    config_path = out / "job_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    (out / CANCEL_FILE).unlink(missing_ok=True)
    log = (out / TRAINER_LOG).open("ab")
    # Its own process group: a cancel or a crash of the trainer frees the GPU with it.
    proc = subprocess.Popen(
        trainer_command(config_path, gpus=gpus),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    offset = 0
    cancel_sent_at: float | None = None
    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            offset, step = _ingest_metrics(ctx, run_id, out / METRICS_FILE, offset)
            status = _status(out)
            total = status.get("max_steps")
            try:
                ctx.progress(int(status.get("step") or step or 0), int(total) if total else None)
            except JobCancelled:
                if cancel_sent_at is None:
                    (out / CANCEL_FILE).touch()
                    cancel_sent_at = time.time()
            if cancel_sent_at is not None and time.time() - cancel_sent_at > CANCEL_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    offset, _ = _ingest_metrics(ctx, run_id, out / METRICS_FILE, offset)
    status = _status(out)
    with ctx.session() as db:
        run = db.get(TrainingRun, run_id)
        assert run is not None
        summary_file = out / SUMMARY_FILE
        if summary_file.is_file():
            run.summary = json.loads(summary_file.read_text())
    # torchrun exits 1 whenever a rank did not exit 0: the state rank 0 wrote says a cancel from a failure
    if proc.returncode == EXIT_CANCELLED or cancel_sent_at is not None or status.get("state") == "cancelled":
        raise JobCancelled()
    if proc.returncode != EXIT_OK:
        tail = (out / TRAINER_LOG).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"trainer exited with {proc.returncode}: {status.get('error') or tail}")
    total = int(status.get("max_steps") or status.get("step") or 0)
    ctx.progress(total, total)
