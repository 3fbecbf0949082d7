from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.auth.models import Role
from app.datasets.service import require_dataset
from app.deps import CurrentUser, SessionDep, SettingsDep
from app.imports.documents import (
    MAX_DOCUMENT_BYTES,
    DocumentImportResult,
    import_document_upload,
)
from app.imports.router import _store_upload
from app.pipeline.formats.documents import DocumentFormat

router = APIRouter(tags=["import"])


@router.post("/datasets/{dataset_id}/documents", response_model=DocumentImportResult, status_code=201)
async def import_document_file(
    dataset_id: int,
    request: Request,
    user: CurrentUser,
    db: SessionDep,
    settings: SettingsDep,
    format: Annotated[DocumentFormat, Query()] = "auto",
    text_field: str = "text",
    max_chars: int = 2000,
    min_chars: int = 50,
    filename: str | None = None,
) -> DocumentImportResult:
    """Import plain documents (.txt, .md, or JSONL/JSON with a text field) as passages for the
    `backtranslate` job (multipart field `file`, or the raw body with `filename`). Form fields override the
    query's. A bad line is a 422 naming it, and nothing is written."""
    require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
    upload = await _store_upload(request, min(settings.max_upload_bytes, MAX_DOCUMENT_BYTES))
    query = {"format": format, "text_field": text_field, "max_chars": max_chars, "min_chars": min_chars}
    return import_document_upload(
        db=db,
        user=user,
        dataset_id=dataset_id,
        upload=upload,
        query=query | {"filename": filename},
        max_field_chars=settings.max_field_chars,
    )
