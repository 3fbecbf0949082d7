from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from app.auth.models import Role
from app.datasets.service import require_dataset
from app.deps import CurrentUser, SessionDep, SettingsDep
from app.errors import Forbidden, Invalid, PayloadTooLarge
from app.imports import service
from app.imports.schemas import FormatName, ImportResult
from app.jobs import service as jobs

router = APIRouter(tags=["import"])


async def _store_upload(request: Request, limit: int) -> tuple[Path, str | None, dict[str, str]]:
    """Stream the upload to disk under the size limit. Multipart (`file` field) or a raw request body."""
    path = service.new_upload_path()
    fields: dict[str, str] = {}
    filename: str | None = None
    content_type = request.headers.get("content-type", "")
    size = 0
    with path.open("wb") as out:
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_part_size=limit)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                path.unlink(missing_ok=True)
                raise Invalid("multipart upload needs a 'file' field", field="file")
            filename = upload.filename
            shutil.copyfileobj(upload.file, out)
            size = out.tell()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
        else:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    break
                out.write(chunk)
    if size > limit:
        path.unlink(missing_ok=True)
        raise PayloadTooLarge(f"upload is larger than the {limit // (1024 * 1024)} MB limit")
    if size == 0:
        path.unlink(missing_ok=True)
        raise Invalid("the upload is empty", field="file")
    return path, filename, fields


@router.post(
    "/datasets/{dataset_id}/import",
    response_model=ImportResult,
    responses={201: {"description": "imported"}, 202: {"description": "queued as a job"}},
)
async def import_records(
    dataset_id: int,
    request: Request,
    response: Response,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    format: Annotated[FormatName, Query()] = "auto",
    skip_bad: bool = False,
    filename: str | None = None,
) -> ImportResult:
    """Import a file (multipart field `file`, or the raw body). Small files import at once (201); large
    ones become an import job (202) whose progress is on GET /jobs/{id}. One bad line and nothing is
    written, unless `skip_bad=true`: then the good lines are written and the bad ones listed."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    path, upload_name, fields = await _store_upload(request, settings.max_upload_bytes)
    fmt = fields.get("format", format)
    skip = fields.get("skip_bad", str(skip_bad)).lower() in ("1", "true", "yes", "on")
    name = upload_name or filename
    try:
        if path.stat().st_size > settings.import_inline_max_bytes:
            job = jobs.create_job(
                db=db,
                user=user,
                kind="import",
                project_id=None,
                dataset_id=dataset_id,
                params={"upload": path.name, "filename": name, "format": fmt, "skip_bad": skip},
            )
            response.status_code = 202
            return ImportResult(imported=0, format=fmt, job_id=job.id)
        result = service.import_inline(
            db=db, dataset_id=dataset_id, path=path, fmt=fmt, filename=name, skip_bad=skip
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    path.unlink(missing_ok=True)
    response.status_code = 201
    return ImportResult.model_validate(result)


UPLOAD_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet"}


@router.post("/uploads", status_code=201)
async def upload_file(request: Request, user: CurrentUser, settings: SettingsDep) -> dict[str, str]:
    """Store a file for a job that reads one (e.g. `convert`); returns the name to pass as `upload`."""
    if user.role == Role.annotator.value:
        raise Forbidden("annotators cannot upload files")
    path, name, _ = await _store_upload(request, settings.max_upload_bytes)
    suffix = Path(name or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        path.unlink(missing_ok=True)
        raise Invalid(
            f"unsupported file type {suffix or '(none)'!r}; use {', '.join(sorted(UPLOAD_SUFFIXES))}",
            field="file",
        )
    final = path.with_suffix(suffix)
    path.rename(final)
    return {"upload": final.name, "filename": name or ""}
