"""Import: parse a file with app.pipeline.formats, validate it whole, write records idempotently."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.base import utcnow
from app.config import get_settings
from app.datasets.models import Dataset
from app.datasets.service import require_dataset
from app.errors import DomainError, Invalid, NotFound
from app.imports.schemas import ImportParams, ImportResult
from app.imports.spool import (
    COPY_COLUMNS,
    COPY_TYPES,
    Spool,
    Unstorable,
    constant_cells,
    copy_tuples,
    decode_cells,
    encode_cells,
    import_meta,
)
from app.jobs import service as jobs
from app.jobs.context import JobCancelled, JobContext
from app.pipeline import formats
from app.pipeline.formats.model import Unit
from app.pipeline.formats.preference import PREFERENCE_FORMATS
from app.preferences import imports as preference_imports
from app.records.bulk import NewRecord, insert_new
from app.records.models import Record

BadLines = list[dict[str, Any]]
# What POST /uploads keeps for the jobs that read a file (e.g. `convert`).
UPLOAD_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet"}


def uploads_dir() -> Path:
    path = get_settings().data_dir / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_upload_path(suffix: str = "") -> Path:
    return uploads_dir() / f"{uuid.uuid4().hex}{suffix}"


def keep_upload(*, db: Session, user: User, path: Path, filename: str | None) -> Path:
    """A stored upload renamed with its file type's suffix for a job to read (audited); any other type is
    deleted."""
    suffix = Path(filename or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        path.unlink(missing_ok=True)
        raise Invalid(
            f"unsupported file type {suffix or '(none)'!r}; use {', '.join(sorted(UPLOAD_SUFFIXES))}",
            field="file",
        )
    final = path.with_suffix(suffix)
    path.rename(final)
    audit.record(
        db=db,
        user_id=user.id,
        action="upload.create",
        entity_type="upload",
        entity_id=final.name,
        detail={"filename": filename, "bytes": final.stat().st_size},
    )
    return final


def _copy_binary(conn: Connection, data: bytes, *, fresh: bool, dataset_id: int, job_id: int | None) -> None:
    """PostgreSQL: one binary COPY stream (app.imports.spool) into records, in the connection's transaction.

    `fresh`: straight into records. Otherwise into a staging table, then one INSERT .. ON CONFLICT DO
    NOTHING, so that a redelivered job skips what the killed attempt wrote.

    Every row of an import has the same dataset_id and job_id, so the per-row foreign-key checks (half of
    the server's work in a COPY) are made once per batch instead (:func:`_lock_parents`).
    """
    cols = ", ".join(COPY_COLUMNS)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        skipping_row_checks = _lock_parents(cur, dataset_id=dataset_id, job_id=job_id)
        target = "records"
        if not fresh:
            target = "import_stage_bin"
            columns = ", ".join(f"{c} {t}" for c, t in zip(COPY_COLUMNS, COPY_TYPES, strict=True))
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {target} ({columns}) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data)
        if not fresh:
            cur.execute(
                f"INSERT INTO records ({cols}) SELECT {cols} FROM {target} "
                "ON CONFLICT (dataset_id, gen_key) DO NOTHING"
            )
            cur.execute(f"TRUNCATE {target}")
        if skipping_row_checks:
            cur.execute("SET LOCAL session_replication_role = origin")


def _lock_parents(cur: Any, *, dataset_id: int, job_id: int | None) -> bool:
    """Check and lock the batch's dataset and job once, as each row's foreign-key trigger would; then,
    where the role may, turn the per-row triggers off for this transaction. True if they are off.

    The same guarantee at a fraction of the cost: `FOR KEY SHARE` is the lock PostgreSQL's own
    foreign-key check takes on the parent row, so neither the dataset nor the job can be deleted until
    this transaction ends, and a parent already gone is NotFound before any row is written. The caller
    turns the triggers back on before the transaction does anything else. Without the privilege to set
    session_replication_role, or if records has a trigger of its own, rows are checked one by one as before.
    """
    if cur.execute("SELECT 1 FROM datasets WHERE id = %s FOR KEY SHARE", (dataset_id,)).fetchone() is None:
        raise NotFound(f"dataset {dataset_id} not found")
    if job_id is not None and (
        cur.execute("SELECT 1 FROM jobs WHERE id = %s FOR KEY SHARE", (job_id,)).fetchone() is None
    ):
        raise NotFound(f"job {job_id} not found")
    # Replica mode turns every trigger off, not only the foreign keys': if records ever has one of its own
    # (user-defined, not internal), rows are checked and triggered one by one instead.
    if cur.execute(
        "SELECT 1 FROM pg_trigger WHERE tgrelid = 'records'::regclass AND NOT tgisinternal LIMIT 1"
    ).fetchone():
        return False
    allowed = "current_setting('is_superuser') = 'on'"
    if cur.connection.info.server_version >= 150000:  # GRANT SET ON PARAMETER came with PostgreSQL 15
        allowed += " OR has_parameter_privilege('session_replication_role', 'SET')"
    row = cur.execute(f"SELECT {allowed}").fetchone()
    if not (row and row[0]):
        return False
    cur.execute("SET LOCAL session_replication_role = replica")
    return True


def _new_record(
    rec: formats.ParsedRecord, *, dataset_id: int, source: str, key: str, job_id: int | None
) -> NewRecord:
    return NewRecord(
        dataset_id=dataset_id,
        instruction=rec.instruction,
        input=rec.input,
        output=rec.output,
        system=rec.system,
        messages=rec.messages,
        source=source,
        label=rec.label,
        is_classification=rec.is_classification,
        gen_key=key,
        job_id=job_id,
        meta=import_meta(rec),
    )


def parse_file(path: Path, *, fmt: str, filename: str | None, skip_bad: bool) -> tuple[Spool, BadLines, str]:
    """Pass 1: parse and check the whole file before anything is written (one bad line and nothing is
    imported, unless `skip_bad`); the good records are spooled to disk, so memory stays bounded."""
    settings = get_settings()
    limits = formats.Limits(max_field_chars=settings.max_field_chars, allow_nul=False)
    with path.open("rb") as fh:
        head = fh.read(65536)
    unit: Unit = "item" if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[" else "line"
    spool = Spool(uploads_dir())
    bad: BadLines = []
    try:
        detected = formats.detect_format(head, filename) if fmt == "auto" else fmt
        with path.open("rb") as fh:
            for item in formats.iter_records(fh, fmt=detected, filename=filename, limits=limits):
                if type(item) is formats.ParsedRecord:
                    try:
                        spool.add(item.line, encode_cells(item))
                        continue
                    except Unstorable as exc:
                        item = formats.BadLine(item.line, exc.field, str(exc), unit=unit)
                assert isinstance(item, formats.BadLine)
                if not skip_bad:
                    raise item.to_error()
                bad.append({"line": item.line, "field": item.field, "message": str(item)})
    except formats.FormatError as exc:
        spool.close()
        raise Invalid(str(exc), line=exc.line, field=exc.field) from exc
    except BaseException:
        spool.close()
        raise
    if not len(spool) and not bad:
        spool.close()
        raise Invalid("the file holds no records")
    return spool, bad, detected


def write_records(
    *,
    sessions: Sequence[Session],
    dataset_id: int,
    records: Spool,
    fmt: str,
    key_prefix: str,
    job_id: int | None,
    batch_size: int,
    on_batch: Callable[[Session, int], None] | None = None,
    fresh: bool = False,
) -> None:
    """Pass 2: write the spooled records in batches; keys make re-runs idempotent. `on_batch(session, rows)`
    may commit each batch.

    PostgreSQL takes one binary COPY per batch (app.imports.spool, _copy_binary); SQLite,
    app.records.bulk.insert_new. `fresh` promises that none of these keys can exist (a job's first
    attempt): PostgreSQL then copies straight into records; the unique index still turns a broken promise
    into an error, never into a duplicate.

    The calling thread reads and frames batches while one writer thread per session streams them to the
    database, so the server's work (index maintenance, WAL) overlaps ours and, with two sessions, runs on
    two server processes. A session is only ever used by its own writer thread.
    """
    source = "seed" if fmt == "self_instruct" else f"import:{fmt}"
    postgres = sessions[0].get_bind().dialect.name == "postgresql"
    constant = constant_cells(dataset_id=dataset_id, source=source, job_id=job_id, now=utcnow())
    batches: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=2 * len(sessions))
    failure: list[BaseException] = []

    def write(db: Session, batch: Any) -> None:
        if postgres:
            _copy_binary(db.connection(), batch, fresh=fresh, dataset_id=dataset_id, job_id=job_id)
        else:
            insert_new(db, batch)

    def writer(db: Session) -> None:
        while (item := batches.get()) is not None:
            if failure:
                continue  # drain after an error so the producer never blocks
            try:
                write(db, item[0])
                if on_batch is not None:
                    on_batch(db, item[1])
            except BaseException as exc:
                failure.append(exc)

    threads = [
        threading.Thread(target=writer, args=(db,), name=f"import-writer-{n}", daemon=True)
        for n, db in enumerate(sessions)
    ]
    for thread in threads:
        thread.start()
    try:
        for batch in records.batches(batch_size):
            if failure:
                break
            if postgres:
                batches.put((copy_tuples(batch, constant=constant, key_prefix=key_prefix), len(batch)))
            else:
                rows = [
                    _new_record(
                        decode_cells(line, cells),
                        dataset_id=dataset_id,
                        source=source,
                        key=f"{key_prefix}:{line}",
                        job_id=job_id,
                    )
                    for line, cells in batch
                ]
                batches.put((rows, len(rows)))
    finally:
        for _ in threads:
            batches.put(None)
        for thread in threads:
            thread.join()
    if failure:
        raise failure[0]


def count_with_prefix(db: Session, dataset_id: int, key_prefix: str) -> int:
    return int(
        db.scalar(
            select(func.count())
            .select_from(Record)
            .where(Record.dataset_id == dataset_id, Record.gen_key.startswith(key_prefix + ":"))
        )
        or 0
    )


def import_inline(
    *, db: Session, dataset_id: int, path: Path, fmt: str, filename: str | None, skip_bad: bool
) -> dict[str, Any]:
    """Small uploads: parse, validate and write in the request's single transaction."""
    records, bad, detected = parse_file(path, fmt=fmt, filename=filename, skip_bad=skip_bad)
    key_prefix = f"imp:{uuid.uuid4().hex[:12]}"
    with contextlib.closing(records):
        write_records(
            sessions=[db],
            dataset_id=dataset_id,
            records=records,
            fmt=detected,
            key_prefix=key_prefix,
            job_id=None,
            batch_size=get_settings().import_batch_size,
            fresh=True,
        )
    if detected in PREFERENCE_FORMATS:
        preference_imports.materialize(db, dataset_id=dataset_id, key_prefix=key_prefix, job_id=None)
    return {"imported": len(records), "bad": bad, "format": detected}


def import_upload(
    *, db: Session, user: User, dataset_id: int, path: Path, fmt: str, filename: str | None, skip_bad: bool
) -> ImportResult:
    """A stored upload into the dataset: small files at once, larger ones as an import job (`job_id` set).

    The upload is deleted once imported or refused; an import job deletes it when it is done."""
    try:
        require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
        if path.stat().st_size > get_settings().import_inline_max_bytes:
            params = {"upload": path.name, "filename": filename, "format": fmt, "skip_bad": skip_bad}
            job = jobs.create_job(
                db=db, user=user, kind="import", project_id=None, dataset_id=dataset_id, params=params
            )
            return ImportResult(imported=0, format=fmt, job_id=job.id)
        result = import_inline(
            db=db, dataset_id=dataset_id, path=path, fmt=fmt, filename=filename, skip_bad=skip_bad
        )
        audit.record(
            db=db,
            user_id=user.id,
            action="import.inline",
            entity_type="dataset",
            entity_id=dataset_id,
            dataset_id=dataset_id,
            detail={**_import_summary(result), "filename": filename},
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)
    return ImportResult.model_validate(result)


def _import_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {"imported": result["imported"], "bad": len(result["bad"]), "format": result["format"]}


def run_import_job(ctx: JobContext) -> None:
    """Job handler (_import_job). The upload goes once the job is over for good: imported, refused for
    what the file holds, or cancelled. After any other failure it stays, for the resumed job to read."""
    try:
        _import_job(ctx)
    except (DomainError, JobCancelled):
        (uploads_dir() / Path(str(ctx.params.get("upload", ""))).name).unlink(missing_ok=True)
        raise


def _import_job(ctx: JobContext) -> None:
    """Re-delivery after a crash re-parses and re-inserts: existing keys are skipped."""
    params = ImportParams.model_validate(ctx.params)
    path = uploads_dir() / Path(params.upload).name
    if not path.is_file():
        raise NotFound(f"upload {params.upload} is gone")
    with ctx.session() as db:
        if db.get(Dataset, ctx.dataset) is None:
            raise NotFound(f"dataset {ctx.dataset} not found")
    records, bad, detected = parse_file(
        path, fmt=params.format, filename=params.filename, skip_bad=params.skip_bad
    )
    total = len(records)
    ctx.progress(0, total, counters={"parsed": total, "bad": len(bad), "format": detected})
    key_prefix = f"imp:j{ctx.job_id}"
    settings = get_settings()
    lock = threading.Lock()
    written = 0

    def commit_batch(db: Session, rows: int) -> None:
        nonlocal written
        db.commit()
        with lock:
            written += rows
            ctx.progress(written, total, counters={"parsed": total, "bad": len(bad), "format": detected})

    with contextlib.ExitStack() as stack:
        stack.callback(records.close)
        # Two writers on PostgreSQL: the server's share of the work then runs on two cores.
        n_writers = 2 if settings.resolved_database_url.startswith("postgresql") else 1
        sessions = [stack.enter_context(ctx.session()) for _ in range(n_writers)]
        write_records(
            sessions=sessions,
            dataset_id=ctx.dataset,
            records=records,
            fmt=detected,
            key_prefix=key_prefix,
            job_id=ctx.job_id,
            batch_size=settings.import_batch_size,
            on_batch=commit_batch,
            # A first attempt cannot collide with itself; a redelivered one skips what was written.
            fresh=ctx.attempt == 1,
        )
    if detected in PREFERENCE_FORMATS:
        # Candidates and verdicts, a committed batch at a time; a resumed job redoes only what is left.
        after: int | None = 0
        while after is not None:
            with ctx.session() as db:
                after = preference_imports.materialize_batch(
                    db, dataset_id=ctx.dataset, key_prefix=key_prefix, job_id=ctx.job_id, after=after
                )
                db.commit()
    with ctx.session() as db:
        imported = count_with_prefix(db, ctx.dataset, key_prefix)
    ctx.set_result({"imported": imported, "bad": bad[:1000], "bad_count": len(bad), "format": detected})
    with ctx.session() as db:
        audit.record(
            db=db,
            user_id=ctx.created_by,
            action="import.job",
            entity_type="dataset",
            entity_id=ctx.dataset,
            dataset_id=ctx.dataset,
            detail={"job_id": ctx.job_id, "imported": imported, "bad": len(bad), "format": detected},
        )
    ctx.progress(
        total, total, counters={"parsed": total, "bad": len(bad), "format": detected, "imported": imported}
    )
    with contextlib.suppress(OSError):
        os.unlink(path)
