"""The service's one settings class (environment prefix ``MELODYGUARD_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..config import DEFAULT_MAX_FILE_BYTES, catalogue_dir

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Read from ``MELODYGUARD_*`` environment variables, e.g. ``MELODYGUARD_CATALOGUE``."""

    model_config = SettingsConfigDict(env_prefix="MELODYGUARD_", extra="ignore")

    catalogue: Path = Field(default_factory=catalogue_dir)
    weights: Path | None = None
    max_upload_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, gt=0)
