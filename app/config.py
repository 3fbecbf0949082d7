"""Service configuration: one Settings object, read from environment variables (prefix ``IF_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "dev-insecure-secret-change-me"  # noqa: S105 - the sentinel we refuse outside development


class Settings(BaseSettings):
    """Every knob of the service. Documented, with examples, in ``.env.example``."""

    model_config = SettingsConfigDict(env_prefix="IF_", env_file=".env", extra="ignore")

    env: Literal["development", "test", "production"] = Field(
        "development",
        description="Only development allows the built-in secret key; test and production refuse it.",
    )
    data_dir: Path = Field(
        Path("data"), description="Artifacts, uploads, exports and the embedded databases."
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL. Empty = embedded SQLite file at DATA_DIR/instructforge.db."
    )
    broker_url: str = Field(
        "", description="Celery broker URL. Empty = embedded SQLite broker at DATA_DIR/broker.db."
    )
    broker_visibility_timeout: int = Field(
        3600, description="Seconds before a Redis broker redelivers an unacknowledged task."
    )
    secret_key: str = Field(DEFAULT_SECRET, description="Signs session cookies and CSRF tokens.")
    session_max_age: int = Field(7 * 24 * 3600, description="Web session lifetime in seconds.")
    cookie_secure: bool = Field(False, description="Mark session cookies Secure (set true behind HTTPS).")
    login_free_failures: int = Field(
        5,
        ge=1,
        description="Failed logins an account may have before each further one costs a growing delay "
        "(1 s, 2 s, 4 s ...); a client address may have four times as many.",
    )
    login_max_delay_seconds: int = Field(
        900, ge=1, description="The longest delay a run of failed logins imposes (HTTP 429 with Retry-After)."
    )
    admin_username: str = Field("admin", description="Username of the admin created on first start.")
    admin_password: str = Field(
        "", description="Password of the admin created on first start. Empty = generated and printed once."
    )
    max_upload_mb: float = Field(200.0, description="Uploads larger than this are refused with 413.")
    max_field_chars: int = Field(1_000_000, description="Longest single text field accepted on import.")
    import_inline_max_bytes: int = Field(
        4_000_000, description="Uploads larger than this import as a background job with progress."
    )
    import_batch_size: int = Field(5_000, description="Records written per transaction by the import job.")
    job_lease_seconds: int = Field(
        60, description="A running job whose worker has not heartbeated for this long is handed to another."
    )
    reaper_interval_seconds: int = Field(15, description="How often workers look for orphaned jobs.")
    teachers: str = Field(
        "", description="Teacher LLMs: a path to a YAML/JSON file, or inline JSON (see docs/teachers.md)."
    )
    models_dir: Path = Field(
        Path("models"), description="Base models for training must be local directories under this folder."
    )
    allow_hub_download: bool = Field(
        False,
        description="Let `instructforge models fetch` download base models from the Hugging Face hub into "
        "MODELS_DIR. Training itself always reads local folders.",
    )
    allow_trust_remote_code: bool = Field(
        False,
        description="Let training runs set trust_remote_code: true, which runs Python shipped in a model "
        "folder on the gpu worker. Off: such a run is refused with a 422 naming the field.",
    )
    hub_token: SecretStr | None = Field(
        None,
        description="A Hugging Face (or Hub-compatible) write token: lets curators push snapshots to the Hub. "
        "Read by the worker only; never logged, stored in a job or returned (docs/hub.md).",
    )
    hub_endpoint: str = Field(
        "https://huggingface.co", description="The Hub to push snapshots to (any Hub-compatible endpoint)."
    )
    worker_concurrency: int = Field(2, description="Processes of the default-queue worker started by `run`.")
    gpus_per_worker: int | None = Field(
        None,
        ge=0,
        le=1024,
        description="GPUs a gpu-queue worker gives one training run: a run asking for more is refused at "
        "creation; a run asking for 2 or more is launched with torchrun (one rank per GPU). Empty: the GPUs "
        "`nvidia-smi -L` lists (none without it). On a machine without CUDA the ranks run on CPU (gloo).",
    )

    @field_validator("hub_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # `IF_HUB_TOKEN=` as .env.example writes it means no token, not an empty one that turns pushing on.
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("gpus_per_worker", mode="before")
    @classmethod
    def _empty_gpus_is_detect(cls, value: object) -> object:
        # `IF_GPUS_PER_WORKER=` as .env.example writes it means "count them", not an invalid number.
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        # A forged session cookie means full admin access: only a development setup may use a known key.
        if self.env != "development" and (self.secret_key == DEFAULT_SECRET or len(self.secret_key) < 32):
            raise ValueError(
                f"IF_SECRET_KEY must be set to a random string of at least 32 characters when IF_ENV={self.env}"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'instructforge.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def worker_gpus(self) -> int:
        """The most GPUs one training run may ask for here: the setting, else those nvidia-smi lists."""
        if self.gpus_per_worker is not None:
            return self.gpus_per_worker
        return _detected_gpus()


@lru_cache
def _detected_gpus() -> int:
    """GPUs `nvidia-smi -L` lists, without importing torch (the web process never does); 0 without it."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


@lru_cache
def get_settings() -> Settings:
    return Settings()
