"""The FAISS vector index, derived from the catalogue's SQLite file and never trusted blindly.

Conventions
-----------
Vectors are L2-normalised float32 rows, so inner product = cosine similarity. Each vector's
FAISS id is its ``windows.vid`` in SQLite.

Kinds: ``flat`` (exact inner product), ``ivf`` (IVF-Flat, ``nlist = 4 sqrt(n)``, ``nprobe``
lists searched), ``hnsw`` (HNSW-Flat, M = 32). ``auto`` takes ``flat`` up to
:data:`AUTO_FLAT_MAX` vectors and ``ivf`` beyond. GPU FAISS is used for search when faiss
reports a GPU. A query's windows are searched in one batch, and exact inner products of a batch
of 16 or more windows go through BLAS (:data:`FAISS_BLAS_THRESHOLD`).

New vectors are appended to a saved index, but an index the catalogue has outgrown is rebuilt
(:meth:`VectorIndex.outgrown`): one of another kind than the catalogue's explicit setting, a
``flat`` index past ``AUTO_FLAT_MAX`` under ``auto``, or an
``ivf`` index that should have 1.5x its lists: the catalogue has grown about 2.25x since they
were trained (1.5x while lists are sized by their 39-vector minimum), so they hold 1.5x the
vectors they were sized for and each search scans 1.5x as many. Rebuilding at a fixed growth
factor keeps the total rebuild work proportional to the final size.

On disk: ``index.faiss`` and ``index.manifest.json`` (format version, kind, dimension, metric,
encoder fingerprint, catalogue generation, vector count, sha256), written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, IndexVersionError

__all__ = ["INDEX_FORMAT_VERSION", "AUTO_FLAT_MAX", "VectorIndex", "IndexManifest", "ivf_nlist"]

INDEX_FORMAT_VERSION = 1
AUTO_FLAT_MAX = 100_000
KINDS = ("auto", "flat", "ivf", "hnsw")


def save_with_manifest(folder: Path, data_name: str, manifest_name: str, write: Callable[[Path], None],
                       manifest: Callable[[str], dict[str, Any]]) -> None:
    """Write ``folder/data_name`` (``write`` fills a temp file) and ``folder/manifest_name`` (the
    dict ``manifest`` makes of the data's sha256) atomically: both go to temp files first, then
    are renamed into place, data before manifest."""
    from ..model.encoder import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{data_name}.tmp{os.getpid()}"
    write(tmp)
    mtmp = folder / f"{manifest_name}.tmp{os.getpid()}"
    mtmp.write_text(json.dumps(manifest(sha256_file(tmp)), indent=2, sort_keys=True))
    os.replace(tmp, folder / data_name)
    os.replace(mtmp, folder / manifest_name)


@dataclass(frozen=True)
class IndexManifest:
    format_version: int
    kind: str
    dim: int
    metric: str
    encoder: str
    generation: int
    n_vectors: int
    max_vid: int
    sha256: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: faiss 1.15 chooses between its sequential kernel and BLAS for exact inner products by
#: comparing ``n_queries x dim`` with ``distance_compute_blas_threshold`` (default 128,000; before,
#: it compared ``n_queries`` with 20). At dim 64 that keeps every query of up to 2,000 windows on
#: the sequential kernel, which on 2 cores is 4-6x slower than BLAS from about 20 query windows
#: on (81k vectors: 100 windows 72 ms against 16 ms; 250 windows 218 against 39). melodyguard
#: therefore lowers that default to 16 x 64: BLAS from 16 query windows. A value set by the
#: caller, or an older faiss's default, is left alone.
FAISS_BLAS_THRESHOLD = 1024
_FAISS_DEFAULT_BLAS_THRESHOLD = 128_000


def _faiss():
    import faiss

    cvar = getattr(faiss, "cvar", None)
    if cvar is not None and getattr(cvar, "distance_compute_blas_threshold", None) == _FAISS_DEFAULT_BLAS_THRESHOLD:
        cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD
    return faiss


def ivf_nlist(n: int) -> int:
    """Inverted lists of an IVF index over ``n`` vectors: 4 sqrt(n), at least 39 vectors each."""
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def resolve_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose from {KINDS}")
    if kind == "auto":
        return "flat" if n <= AUTO_FLAT_MAX else "ivf"
    return kind


class VectorIndex:
    """A FAISS index over catalogue windows, with its manifest."""

    def __init__(self, index: Any, manifest: IndexManifest) -> None:
        self._index = index
        self.manifest = manifest
        self._search_index = self._on_gpu(index, manifest.kind)

    @staticmethod
    def _on_gpu(index: Any, kind: str) -> Any:
        """A GPU copy of ``index`` for searching when faiss reports a GPU (HNSW stays on the
        CPU: faiss has no GPU HNSW); else ``index`` itself."""
        faiss = _faiss()
        if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0 and kind != "hnsw":
            try:  # pragma: no cover - no GPU in CI
                return faiss.index_cpu_to_all_gpus(index)
            except Exception:  # pragma: no cover
                return index
        return index

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        *,
        kind: str = "auto",
        encoder: str,
        generation: int,
        nprobe: int = 16,
        seed: int = 0,
    ) -> VectorIndex:
        """Build an index over ``vectors`` ``(n, d)`` with int64 ``ids`` ``(n,)``."""
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        n, d = vectors.shape if vectors.ndim == 2 else (0, 0)
        real = resolve_kind(kind, n)
        params: dict[str, Any] = {}
        if real == "flat" or n == 0:
            real = "flat"
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif real == "ivf":
            nlist = ivf_nlist(n)
            quant = faiss.IndexFlatIP(d)
            ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rs = np.random.default_rng(seed)
            sample = vectors[rs.choice(n, size=min(n, 64 * nlist), replace=False)]
            ivf.train(sample)
            ivf.nprobe = min(nprobe, nlist)
            index = faiss.IndexIDMap2(ivf)
            params = {"nlist": nlist, "nprobe": ivf.nprobe}
        else:
            h = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = 80
            h.hnsw.efSearch = 96
            index = faiss.IndexIDMap2(h)
            params = {"M": 32, "efSearch": 96}
        if n:
            index.add_with_ids(vectors, ids)
        man = IndexManifest(
            INDEX_FORMAT_VERSION, real, int(d), "inner_product", encoder, int(generation), int(n),
            int(ids.max()) if n else 0, "", params,
        )
        return cls(index, man)

    def outgrown(self, n: int, *, kind: str = "auto") -> bool:
        """Whether an index that would hold ``n`` vectors should be rebuilt rather than appended
        to (``kind``: the catalogue's index setting): another kind than an explicit setting;
        ``flat`` past :data:`AUTO_FLAT_MAX` under ``auto``; ``ivf`` once :func:`ivf_nlist` of
        ``n`` is 1.5x its trained lists."""
        m = self.manifest
        if kind != "auto" and kind != m.kind:
            return True
        if m.kind == "flat":
            return kind == "auto" and resolve_kind("auto", n) != "flat"
        if m.kind == "ivf":
            return ivf_nlist(n) >= 1.5 * int(m.params.get("nlist", 1))
        return False

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, generation: int) -> None:
        if len(ids):
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
            self._search_index = self._on_gpu(self._index, self.manifest.kind)  # the GPU copy is stale
        m = self.manifest
        self.manifest = IndexManifest(
            m.format_version, m.kind, m.dim, m.metric, m.encoder, generation, self.ntotal,
            max(m.max_vid, int(ids.max()) if len(ids) else 0), "", m.params,
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, ids), each ``(n_queries, k)``; missing neighbours have id -1."""
        if self.ntotal == 0:
            q = queries.shape[0]
            return np.zeros((q, k), np.float32), np.full((q, k), -1, np.int64)
        return self._search_index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.ntotal))

    # ------------------------------------------------------------------ persistence
    def save(self, folder: Path) -> None:
        """Write ``index.faiss`` and its manifest atomically (temp file, then rename)."""
        faiss = _faiss()

        def manifest(digest: str) -> dict[str, Any]:
            m = self.manifest
            self.manifest = IndexManifest(
                m.format_version, m.kind, m.dim, m.metric, m.encoder, m.generation, self.ntotal, m.max_vid, digest,
                m.params,
            )
            return self.manifest.to_dict()

        save_with_manifest(folder, "index.faiss", "index.manifest.json",
                           lambda tmp: faiss.write_index(self._index, str(tmp)), manifest)

    @classmethod
    def load(cls, folder: Path, *, encoder: str, dim: int) -> VectorIndex:
        """Load and verify an index. Raises :class:`IndexVersionError` on any mismatch."""
        from ..model.encoder import sha256_file

        faiss = _faiss()
        mpath, ipath = folder / "index.manifest.json", folder / "index.faiss"
        if not (mpath.is_file() and ipath.is_file()):
            raise IndexVersionError(f"no index in {folder}")
        try:
            m = IndexManifest(**json.loads(mpath.read_text()))
        except (ValueError, TypeError) as exc:
            raise IndexVersionError(f"index manifest {mpath} is unreadable: {exc}") from exc
        if m.format_version != INDEX_FORMAT_VERSION:
            raise IndexVersionError(f"index format v{m.format_version}; this melodyguard reads v{INDEX_FORMAT_VERSION}")
        if m.encoder != encoder or m.dim != dim:
            raise IndexVersionError(
                f"index was built for encoder {m.encoder} (dim {m.dim}); the loaded encoder is {encoder} (dim {dim})"
            )
        if sha256_file(ipath) != m.sha256:
            raise IndexVersionError(f"{ipath} does not match its manifest checksum (corrupt or replaced)")
        index = faiss.read_index(str(ipath))
        if index.ntotal != m.n_vectors:
            raise IndexVersionError(f"{ipath} holds {index.ntotal} vectors; its manifest says {m.n_vectors}")
        return cls(index, m)
