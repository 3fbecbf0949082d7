"""Import: parse a file with app.pipeline.formats, validate it whole, write records idempotently."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.config import get_settings
from app.datasets.models import Dataset
from app.errors import Invalid, NotFound
from app.imports.schemas import ImportParams
from app.pipeline import formats
from app.records.models import Record

BadLines = list[dict[str, Any]]


def uploads_dir() -> Path:
    path = get_settings().data_dir / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_upload_path(suffix: str = "") -> Path:
    return uploads_dir() / f"{uuid.uuid4().hex}{suffix}"


def record_row(
    rec: formats.ParsedRecord, *, dataset_id: int, fmt: str, key: str, job_id: int | None
) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if rec.extra:
        meta["import_extra"] = rec.extra
    return {
        "dataset_id": dataset_id,
        "instruction": rec.instruction,
        "input": rec.input,
        "output": rec.output,
        "system": rec.system,
        "messages": rec.messages,
        "status": "pending",
        "source": "seed" if fmt == "self_instruct" else f"import:{fmt}",
        "label": rec.label,
        "is_classification": rec.is_classification,
        "gen_key": key,
        "job_id": job_id,
        "meta": meta,
        "tags": [],
    }


def insert_ignore_duplicates(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows; rows whose (dataset_id, gen_key) exist already are skipped (idempotent re-runs)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = pg_insert(Record).on_conflict_do_nothing(index_elements=["dataset_id", "gen_key"])
    elif dialect == "sqlite":
        stmt = sqlite_insert(Record).on_conflict_do_nothing(index_elements=["dataset_id", "gen_key"])
    else:
        stmt = insert(Record)
    conn.execute(stmt, list(rows))


def parse_file(
    path: Path, *, fmt: str, filename: str | None, skip_bad: bool
) -> tuple[list[formats.ParsedRecord], BadLines, str]:
    """Parse and validate the whole file before anything is written: one bad line and nothing is imported."""
    settings = get_settings()
    limits = formats.Limits(max_field_chars=settings.max_field_chars)
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
    db: Session,
    dataset_id: int,
    records: Iterable[formats.ParsedRecord],
    fmt: str,
    key_prefix: str,
    job_id: int | None,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Write in batches, each its own transaction when `on_batch` commits; keys make re-runs idempotent."""
    batch: list[dict[str, Any]] = []
    written = 0
    conn = db.connection()
    for rec in records:
        batch.append(
            record_row(rec, dataset_id=dataset_id, fmt=fmt, key=f"{key_prefix}:{rec.line}", job_id=job_id)
        )
        if len(batch) >= batch_size:
            insert_ignore_duplicates(conn, batch)
            written += len(batch)
            batch = []
            if on_batch is not None:
                on_batch(written)
                conn = db.connection()
    if batch:
        insert_ignore_duplicates(conn, batch)
        written += len(batch)
        if on_batch is not None:
            on_batch(written)


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
        db=db,
        dataset_id=dataset_id,
        records=records,
        fmt=detected,
        key_prefix=key_prefix,
        job_id=None,
        batch_size=get_settings().import_batch_size,
    )
    return {"imported": len(records), "bad": bad, "format": detected}


def run_import_job(ctx: Any) -> None:
    """Job handler. Re-delivery after a crash re-parses and re-inserts: existing keys are skipped."""
    params = ImportParams.model_validate(ctx.params)
    path = uploads_dir() / Path(params.upload).name
    if not path.is_file():
        raise NotFound(f"upload {params.upload} is gone")
    with ctx.session() as db:
        if db.get(Dataset, ctx.dataset_id) is None:
            raise NotFound(f"dataset {ctx.dataset_id} not found")
    records, bad, detected = parse_file(
        path, fmt=params.format, filename=params.filename, skip_bad=params.skip_bad
    )
    total = len(records)
    ctx.progress(0, total, counters={"parsed": total, "bad": len(bad), "format": detected})
    key_prefix = f"imp:j{ctx.job_id}"
    settings = get_settings()
    with ctx.session() as db:

        def commit_batch(written: int) -> None:
            db.commit()
            ctx.progress(written, total, counters={"parsed": total, "bad": len(bad), "format": detected})

        write_records(
            db=db,
            dataset_id=ctx.dataset_id,
            records=records,
            fmt=detected,
            key_prefix=key_prefix,
            job_id=ctx.job_id,
            batch_size=settings.import_batch_size,
            on_batch=commit_batch,
        )
        imported = count_with_prefix(db, ctx.dataset_id, key_prefix)
    ctx.set_result({"imported": imported, "bad": bad[:1000], "bad_count": len(bad), "format": detected})
    ctx.progress(
        total, total, counters={"parsed": total, "bad": len(bad), "format": detected, "imported": imported}
    )
    with contextlib.suppress(OSError):
        os.unlink(path)
