"""The catalogue (SQLite, the source of truth) and the FAISS index derived from it."""

from .store import (
    CATALOGUE_FORMAT_VERSION,
    DEFAULT_HOP,
    Catalogue,
    WindowTable,
    Work,
    require_works,
)
from .vectors import AUTO_FLAT_MAX, INDEX_FORMAT_VERSION, IndexManifest, VectorIndex

__all__ = [
    "Catalogue",
    "Work",
    "WindowTable",
    "CATALOGUE_FORMAT_VERSION",
    "DEFAULT_HOP",
    "VectorIndex",
    "IndexManifest",
    "INDEX_FORMAT_VERSION",
    "AUTO_FLAT_MAX",
    "require_works",
]
