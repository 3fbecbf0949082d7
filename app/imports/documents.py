"""Import plain documents as passages for instruction backtranslation (docs/formats.md, "Documents").

Each passage is a record with source 'document', the passage in `output` and an empty instruction; meta
holds the document's name, the passage's index and its character offsets in the document. The whole file
is read and split before anything is written, and the passages go in the request's one transaction: a
bad line is a 422 naming it, and nothing is half-written.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth.models import Role, User
from app.datasets.service import require_dataset
from app.errors import Invalid, validation_message
from app.pipeline.formats.documents import DocumentFormat, read_documents, split_passages
from app.pipeline.formats.model import FormatError
from app.records.bulk import NewRecord, insert_new

PASSAGE_REASON = "document_passage"
SOURCE = "document"
# Documents are split in memory inside the request (the text and its passages, a few times the file):
# 20 MB of text is already some 10,000 passages of the default size.
MAX_DOCUMENT_BYTES = 20 * 1024 * 1024


class DocumentImportParams(BaseModel):
    format: DocumentFormat = Field(
        "auto", description="text (.txt, .md), jsonl or json; auto: from the file name (else text)."
    )
    text_field: str = Field("text", min_length=1, max_length=200, description="JSON field with the text.")
    max_chars: int = Field(2000, ge=100, le=100_000, description="Longest passage, in characters.")
    min_chars: int = Field(50, ge=1, le=10_000, description="Shorter passages (headings alone) are left out.")


class DocumentImportResult(BaseModel):
    documents: int
    passages: int
    skipped_short: int = 0
    format: str


def import_documents(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    path: Path,
    filename: str | None,
    params: DocumentImportParams | dict[str, Any],
    max_field_chars: int,
) -> DocumentImportResult:
    """Read, split and write one uploaded file of documents (`params` as the model or as a request's raw
    values); the upload is deleted either way."""
    from app.pipeline.formats.documents import document_format

    try:
        require_dataset(db=db, user=user, dataset_id=dataset_id, min_role=Role.curator.value)
        if not isinstance(params, DocumentImportParams):
            try:
                params = DocumentImportParams.model_validate(params)
            except ValidationError as exc:
                raise Invalid(validation_message(exc.errors())) from exc
        if params.min_chars > params.max_chars:
            raise Invalid("min_chars must not exceed max_chars", field="min_chars")
        try:
            docs = read_documents(
                path.read_bytes(),
                filename=filename,
                fmt=params.format,
                text_field=params.text_field,
                max_chars=max_field_chars,
            )
        except FormatError as exc:
            raise Invalid(str(exc), line=exc.line, field=exc.field) from exc
        batch = uuid.uuid4().hex[:12]
        rows: list[NewRecord] = []
        short = 0
        for d, doc in enumerate(docs):
            every = split_passages(doc.text, max_chars=params.max_chars)
            kept = [p for p in every if len(p.text) >= params.min_chars]
            short += len(every) - len(kept)
            for p in kept:
                rows.append(
                    NewRecord(
                        dataset_id=dataset_id,
                        gen_key=f"doc:{batch}:{d}:{p.index}",
                        source=SOURCE,
                        instruction="",
                        output=p.text,
                        # Source text, not training data: filtered with its reason, so "accept all
                        # pending", the review queue, snapshots and the charts leave passages out.
                        status="filtered",
                        reason=PASSAGE_REASON,
                        meta={
                            "document": doc.name,
                            "document_line": doc.line,
                            "passage_index": p.index,
                            "char_start": p.start,
                            "char_end": p.end,
                            **({"filename": filename} if filename else {}),
                        },
                    )
                )
        if not rows:
            raise Invalid(f"no passage of at least {params.min_chars} characters in the file", field="file")
        insert_new(db, rows)
        kind = document_format(filename, params.format)
        result = DocumentImportResult(
            documents=len(docs), passages=len(rows), skipped_short=short, format=kind
        )
        audit.record(
            db=db,
            user_id=user.id,
            action="import.documents",
            entity_type="dataset",
            entity_id=dataset_id,
            dataset_id=dataset_id,
            detail={**result.model_dump(), "filename": filename},
        )
        return result
    finally:
        path.unlink(missing_ok=True)


def import_document_upload(
    *,
    db: Session,
    user: User,
    dataset_id: int,
    upload: tuple[Path, str | None, dict[str, str]],
    query: dict[str, Any],
    max_field_chars: int,
) -> DocumentImportResult:
    """The endpoint's call: a stored upload (path, file name, form fields); form fields override the query."""
    path, name, fields = upload
    params = {k: v for k, v in {**query, **fields}.items() if k in DocumentImportParams.model_fields}
    filename = name or query.get("filename")
    return import_documents(
        db=db,
        user=user,
        dataset_id=dataset_id,
        path=path,
        filename=filename,
        params=params,
        max_field_chars=max_field_chars,
    )
