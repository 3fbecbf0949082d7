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

router = APIRouter(tags=["import"])
TRUE = ("1", "true", "yes", "on")  # how a multipart form says skip_bad


async def _store_upload(request: Request, limit: int) -> tuple[Path, str | None, dict[str, str]]:
    """Stream the upload to disk under the size limit. Multipart (`file` field) or a raw request body.

    Whatever goes wrong on the way (a broken multipart body, a client gone mid-upload, a refusal) leaves
    no file behind."""
    path = service.new_upload_path()
    try:
        filename, fields, size = await _receive(request, limit, path)
        if size > limit:
            raise PayloadTooLarge(f"upload is larger than the {limit // (1024 * 1024)} MB limit")
        if size == 0:
            raise Invalid("the upload is empty", field="file")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, filename, fields


async def _receive(request: Request, limit: int, path: Path) -> tuple[str | None, dict[str, str], int]:
    """Write the upload to `path`: (its file name, the form's other fields, bytes received)."""
    with path.open("wb") as out:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    break
                out.write(chunk)
            return None, {}, size
        async with request.form(max_part_size=limit) as form:  # closes the spooled parts on the way out
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise Invalid("multipart upload needs a 'file' field", field="file")
            shutil.copyfileobj(upload.file, out)
            return upload.filename, {k: v for k, v in form.items() if isinstance(v, str)}, out.tell()


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
    path, name, fields = await _store_upload(request, settings.max_upload_bytes)
    fmt, skip = fields.get("format", format), fields.get("skip_bad", str(skip_bad)).lower() in TRUE
    result = service.import_upload(
        db=db, user=user, dataset_id=dataset_id, path=path, fmt=fmt, filename=name or filename, skip_bad=skip
    )
    response.status_code = 202 if result.job_id is not None else 201
    return result


@router.post("/uploads", status_code=201)
async def upload_file(
    request: Request, user: CurrentUser, db: SessionDep, settings: SettingsDep
) -> dict[str, str]:
    """Store a file for a job that reads one (e.g. `convert`); returns the name to pass as `upload`."""
    if user.role == Role.annotator.value:
        raise Forbidden("annotators cannot upload files")
    path, name, _ = await _store_upload(request, settings.max_upload_bytes)
    final = service.keep_upload(db=db, user=user, path=path, filename=name)
    return {"upload": final.name, "filename": name or ""}
