"""Import: parse a file with app.pipeline.formats, validate it whole, write records idempotently."""

from __future__ import annotations

import contextlib
import json
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
from app.jobs import service as jobs
from app.jobs.context import JobCancelled, JobContext
from app.pipeline import formats
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


# Column order of the rows the import writes; one tuple per record (tuples, not dicts: this is the hot path).
_COPY_COLUMNS = (
    "dataset_id",
    "instruction",
    "input",
    "output",
    "system",
    "messages",
    "status",
    "source",
    "label",
    "is_classification",
    "gen_key",
    "job_id",
    "meta",
    "tags",
)
Row = tuple[Any, ...]


def record_row(
    rec: formats.ParsedRecord, *, dataset_id: int, source: str, key: str, job_id: int | None
) -> Row:
    meta = {"import_extra": rec.extra} if rec.extra else None
    return (
        dataset_id,
        rec.instruction,
        rec.input,
        rec.output,
        rec.system,
        rec.messages,
        "pending",
        source,
        rec.label,
        rec.is_classification,
        key,
        job_id,
        meta,
        None,
    )


def _json_cell(value: Any, empty: str) -> str:
    # Most imported rows have no meta and no tags: skip json.dumps for those (it dominated COPY time).
    return json.dumps(value, ensure_ascii=False) if value else empty


def _copy_cells(row: Row) -> Row:
    messages = json.dumps(row[5], ensure_ascii=False) if row[5] is not None else None
    return (*row[:5], messages, *row[6:12], _json_cell(row[12], "{}"), _json_cell(row[13], "[]"))


def _copy_insert(conn: Connection, rows: Sequence[Row]) -> None:
    """PostgreSQL: COPY into a staging table, then one INSERT .. ON CONFLICT DO NOTHING (re-runs)."""
    cols = ", ".join(_COPY_COLUMNS)
    select_cols = ", ".join(f"{c}::jsonb" if c in ("messages", "meta", "tags") else c for c in _COPY_COLUMNS)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS import_stage (dataset_id bigint, instruction text, input text, "
            "output text, system text, messages text, status text, source text, label text, "
            "is_classification boolean, gen_key text, job_id bigint, meta text, tags text) ON COMMIT DELETE ROWS"
        )
        with cur.copy(f"COPY import_stage ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(_copy_cells(row))
        cur.execute(
            f"INSERT INTO records ({cols}, version, flagged, created_at, updated_at) "
            f"SELECT {select_cols}, 1, false, now(), now() FROM import_stage "
            "ON CONFLICT (dataset_id, gen_key) DO NOTHING"
        )
        cur.execute("TRUNCATE import_stage")


def _copy_direct(conn: Connection, rows: Sequence[Row]) -> None:
    """PostgreSQL: COPY straight into records, when no row can exist yet (first attempt, fresh keys)."""
    now = utcnow()
    cols = ", ".join(_COPY_COLUMNS)
    raw = conn.connection.driver_connection
    assert raw is not None
    with (
        raw.cursor() as cur,
        cur.copy(f"COPY records ({cols}, version, flagged, created_at, updated_at) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row((*_copy_cells(row), 1, False, now, now))


def insert_ignore_duplicates(conn: Connection, rows: Sequence[Row], *, fresh: bool = False) -> None:
    """Insert rows; rows whose (dataset_id, gen_key) exist already are skipped (idempotent re-runs).

    PostgreSQL takes the COPY paths above (the import's hot path); SQLite, app.records.bulk.insert_new.
    `fresh` promises that none of these keys can exist (a job's first attempt): PostgreSQL then takes a
    plain COPY; the unique index still turns a broken promise into an error, never into a duplicate.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        (_copy_direct if fresh else _copy_insert)(conn, rows)
        return
    insert_new(conn, map(_new_record, rows))


def _new_record(row: Row) -> NewRecord:
    """A row (in _COPY_COLUMNS order) as app.records.bulk takes it; its tags slot is always empty."""
    return NewRecord(
        dataset_id=row[0],
        instruction=row[1],
        input=row[2],
        output=row[3],
        system=row[4],
        messages=row[5],
        status=row[6],
        source=row[7],
        label=row[8],
        is_classification=row[9],
        gen_key=row[10],
        job_id=row[11],
        meta=row[12] or {},
    )


def parse_file(
    path: Path, *, fmt: str, filename: str | None, skip_bad: bool
) -> tuple[list[formats.ParsedRecord], BadLines, str]:
    """Parse and validate the whole file before anything is written: one bad line and nothing is imported."""
    settings = get_settings()
    limits = formats.Limits(max_field_chars=settings.max_field_chars, allow_nul=False)
    with path.open("rb") as fh:
        head = fh.read(65536)
    try:
        detected = formats.detect_format(head, filename) if fmt == "auto" else fmt
        with path.open("rb") as fh:
            records, bad_lines = formats.parse_all(
                fh, fmt=detected, filename=filename, skip_bad=skip_bad, limits=limits
            )
    except formats.FormatError as exc:
        raise Invalid(str(exc), line=exc.line, field=exc.field) from exc
    bad: BadLines = [{"line": b.line, "field": b.field, "message": str(b)} for b in bad_lines]
    records, nul_bad = _refuse_nul(records)
    if nul_bad and not skip_bad:
        first = nul_bad[0]
        raise Invalid(
            f'line {first["line"]}: field "{first["field"]}": {first["message"]}',
            line=first["line"],
            field=first["field"],
        )
    bad = sorted(bad + nul_bad, key=lambda b: b["line"]) if nul_bad else bad
    if not records and not bad:
        raise Invalid("the file holds no records")
    return records, bad, detected


def _refuse_nul(records: list[formats.ParsedRecord]) -> tuple[list[formats.ParsedRecord], BadLines]:
    """NUL cannot be stored in PostgreSQL text: such records are bad input, named by line and field."""
    good: list[formats.ParsedRecord] = []
    bad: BadLines = []
    for rec in records:
        field = next(
            (f for f in ("instruction", "input", "output", "system") if "\x00" in (getattr(rec, f) or "")),
            None,
        )
        if field is None and rec.messages and any("\x00" in m["content"] for m in rec.messages):
            field = "messages"
        if field is None:
            good.append(rec)
        else:
            bad.append({"line": rec.line, "field": field, "message": "contains a NUL character (\\u0000)"})
    return good, bad


def write_records(
    *,
    sessions: Sequence[Session],
    dataset_id: int,
    records: Sequence[formats.ParsedRecord],
    fmt: str,
    key_prefix: str,
    job_id: int | None,
    batch_size: int,
    on_batch: Callable[[Session, int], None] | None = None,
    fresh: bool = False,
) -> None:
    """Write in batches; keys make re-runs idempotent. `on_batch(session, rows)` may commit each batch.

    The calling thread builds rows while one writer thread per session streams batches to the
    database, so the server's work (index maintenance, WAL) overlaps ours and, with two sessions,
    runs on two server processes. A session is only ever used by its own writer thread.
    """
    source = "seed" if fmt == "self_instruct" else f"import:{fmt}"
    batches: queue.Queue[list[Row] | None] = queue.Queue(maxsize=2 * len(sessions))
    failure: list[BaseException] = []

    def writer(db: Session) -> None:
        while (rows := batches.get()) is not None:
            if failure:
                continue  # drain after an error so the producer never blocks
            try:
                insert_ignore_duplicates(db.connection(), rows, fresh=fresh)
                if on_batch is not None:
                    on_batch(db, len(rows))
            except BaseException as exc:
                failure.append(exc)

    threads = [
        threading.Thread(target=writer, args=(db,), name=f"import-writer-{n}", daemon=True)
        for n, db in enumerate(sessions)
    ]
    for thread in threads:
        thread.start()
    try:
        for start in range(0, len(records), batch_size):
            if failure:
                break
            batches.put(
                [
                    record_row(
                        r, dataset_id=dataset_id, source=source, key=f"{key_prefix}:{r.line}", job_id=job_id
                    )
                    for r in records[start : start + batch_size]
                ]
            )
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
