"""What a teacher is: its endpoint, its default sampling, its prices and the limits the gateway obeys.

Read once per process from the ``IF_TEACHERS`` setting (docs/teachers.md); nothing here talks to a network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError


class Sampling(BaseModel):
    """Sampling parameters; ``None`` means "use the teacher's default"."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None

    def merged_over(self, base: Sampling) -> Sampling:
        """These values where set, ``base``'s elsewhere."""
        return Sampling(**{**base.model_dump(), **self.model_dump(exclude_none=True)})


class TeacherConfig(BaseModel):
    """A named teacher endpoint (see docs/teachers.md)."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = Field(None, description="Environment variable holding the key; None for local.")
    api: Literal["chat", "completions"] = "chat"
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    stop: list[str] | None = None
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(1.0, ge=0, description="First retry waits about this long, then doubles.")
    backoff_max_s: float = Field(60.0, ge=0)
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive calls failing after all their retries that open the circuit."
    )
    breaker_window_s: float = Field(
        600.0, gt=0, description="Open the circuit when every attempt has failed for this long."
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Vendor-specific request fields.")
    transport: Literal["aiohttp", "httpx"] = Field(
        "aiohttp",
        description="How the openai client sends: over aiohttp (lean, the default) or its own httpx2 stack.",
    )

    batch: bool = Field(
        False,
        description="The endpoint offers OpenAI's Batch API (files + batches): jobs may run in batch mode.",
    )
    batch_price_in_per_1k: float | None = Field(
        None, ge=0, description="Input price through the Batch API; default: half of price_in_per_1k."
    )
    batch_price_out_per_1k: float | None = Field(
        None, ge=0, description="Output price through the Batch API; default: half of price_out_per_1k."
    )
    batch_poll_s: float = Field(
        60.0, gt=0, description="How long a job in batch mode waits, holding no worker, between polls."
    )
    batch_max_attempts: int = Field(
        3, ge=1, description="Batches one request may go into before it counts as failed (expired, errors)."
    )
    batch_max_requests: int = Field(
        50_000,
        ge=1,
        description="Most requests in one batch (OpenAI: 50,000); a larger job is split into several.",
    )
    batch_max_bytes: int = Field(
        200_000_000,
        ge=1_000,
        description="Largest batch input file in bytes (OpenAI: 200 MB); a larger job is split into several.",
    )

    @property
    def batch_prices(self) -> tuple[float, float]:
        """(in, out) per 1k tokens through the Batch API: half the synchronous prices unless set."""
        pin = self.price_in_per_1k / 2 if self.batch_price_in_per_1k is None else self.batch_price_in_per_1k
        pout = (
            self.price_out_per_1k / 2 if self.batch_price_out_per_1k is None else self.batch_price_out_per_1k
        )
        return pin, pout

    def at_batch_prices(self) -> TeacherConfig:
        """This teacher priced as its Batch API is: what a batch-mode job's cost estimate counts with."""
        pin, pout = self.batch_prices
        return self.model_copy(update={"price_in_per_1k": pin, "price_out_per_1k": pout})

    @property
    def default_sampling(self) -> Sampling:
        return Sampling(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens, stop=self.stop
        )


def load_teachers(source: str) -> dict[str, TeacherConfig]:
    """Teachers from a YAML/JSON file path or an inline JSON string (the ``IF_TEACHERS`` setting).

    Accepted shapes: ``{"teachers": [...]}``, a list of teachers, or a mapping ``name -> teacher``.
    """
    text = source.strip()
    if not text:
        return {}
    if text[0] in "[{":
        data: Any = json.loads(text)
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"teachers config not found: {path}")
        raw = path.read_text(encoding="utf-8")
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    if isinstance(data, dict) and "teachers" in data:
        data = data["teachers"]
    if isinstance(data, dict):
        items = [{"name": name, **cfg} for name, cfg in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise ValueError("teachers config must be a list of teachers or a mapping name -> teacher")
    teachers: dict[str, TeacherConfig] = {}
    for item in items:
        try:
            teacher = TeacherConfig.model_validate(item)
        except ValidationError as exc:
            raise ValueError(f"invalid teacher config {item.get('name', '?')!r}: {exc}") from exc
        teachers[teacher.name] = teacher
    return teachers
