from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FormatName = Literal[
    "auto",
    "alpaca",
    "sharegpt",
    "openai",
    "dolly",
    "self_instruct",
    "mt_bench",
    "belle_eval",
    "prompts",
    "preference",
    "hh_rlhf",
    "ultrafeedback",
]


class ImportParams(BaseModel):
    """Parameters of an import job (the upload is already stored by the API)."""

    upload: str = Field(description="File name under DATA_DIR/uploads.")
    filename: str | None = None
    format: FormatName = "auto"
    skip_bad: bool = Field(
        False, description="Import the good lines and report the bad ones, instead of nothing."
    )


class BadLineRead(BaseModel):
    line: int
    field: str | None
    message: str


class ImportResult(BaseModel):
    imported: int
    skipped_duplicates: int = 0
    bad: list[BadLineRead] = Field(default_factory=list)
    format: str
    job_id: int | None = None
