"""HTTP API (FastAPI): ``create_app(settings)``."""

from .app import create_app
from .settings import Settings

__all__ = ["create_app", "Settings"]
