"""The service's one settings class. Every field is read from an environment variable with the
prefix ``MELODYGUARD_`` (e.g. ``MELODYGUARD_CATALOGUE``, ``MELODYGUARD_RATE_LIMIT_PER_MINUTE``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..config import DEFAULT_MAX_FILE_BYTES, catalogue_dir

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Read from ``MELODYGUARD_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="MELODYGUARD_", extra="ignore")

    #: catalogue folder (SQLite + index); API keys and audit jobs live in ``api.sqlite`` beside it
    catalogue: Path = Field(default_factory=catalogue_dir)
    #: VAE weights (default: the shipped ones)
    weights: Path | None = None
    #: largest single upload (works, checks), bytes
    max_upload_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, gt=0)
    #: largest audit request body (several files or one zip), bytes
    max_audit_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    #: most files in one audit (loose or inside a zip)
    max_audit_files: int = Field(default=500, gt=0)
    #: most bytes a zip may inflate to
    max_zip_uncompressed_bytes: int = Field(default=500 * 1024 * 1024, gt=0)
    #: requests per minute per API key (0 = no limit), with bursts up to ``rate_limit_burst``
    rate_limit_per_minute: float = Field(default=600.0, ge=0)
    rate_limit_burst: int = Field(default=60, gt=0)
    #: run queued audit jobs in this process (a background thread)
    run_audit_worker: bool = True
    #: refit the catalogue's chance law in a background thread after registrations and deletions
    #: (at 100 works, then whenever the catalogue doubles or halves), as ``melodyguard add`` does
    auto_law: bool = True
    #: threads each native call (torch, faiss) may use in a server process; requests already run
    #: concurrently, so more than one makes their thread teams fight over the cores
    threads: int = Field(default=1, ge=1)

    @property
    def api_db(self) -> Path:
        return self.catalogue / "api.sqlite"

    @property
    def jobs_dir(self) -> Path:
        return self.catalogue / "api-jobs"
