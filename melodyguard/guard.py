"""Guarded generation: the VAE's samples screened by the same encoder against the catalogue.

Each round samples ``n`` candidates with :func:`melodyguard.model.generate.sample_melodies`
(round r uses seed ``seed + r``, so round 0 is exactly what the unguarded generator gives for
``seed``). Every candidate is checked with :func:`melodyguard.detect.check_melody`; candidates
that are not ``clear`` are discarded and the next round fills the gap, until ``n`` are kept or
``budget`` candidates have been tried (default ``10 n``).
"""

from __future__ import annotations

from typing import Any

from .detect import DEFAULT_DETECT, DetectConfig, check_melody
from .errors import InvalidInputError
from .fingerprint.melody import Melody
from .model.generate import sample_melodies

__all__ = ["guarded_generate"]


def guarded_generate(
    encoder: Any,
    catalogue: Any,
    n: int,
    *,
    bars: int = 8,
    temperature: float = 1.0,
    seed: int = 0,
    budget: int | None = None,
    config: DetectConfig = DEFAULT_DETECT,
) -> dict[str, Any]:
    """Returns ``{"kept": [(melody, report)], "rejected": [reason dicts], "tried": int}``."""
    if n < 1:
        raise InvalidInputError(f"n must be >= 1; got {n}")
    budget = budget if budget is not None else 10 * n
    if budget < n:
        raise InvalidInputError(f"budget ({budget}) must be at least n ({n})")
    kept: list[tuple[Melody, dict[str, Any]]] = []
    rejected: list[dict[str, Any]] = []
    tried = 0
    rnd = 0
    while len(kept) < n and tried < budget:
        for cand in sample_melodies(encoder, n, bars=bars, temperature=temperature, seed=seed + rnd):
            if len(kept) >= n or tried >= budget:
                break
            tried += 1
            if len(cand) < config.min_matched_notes:
                rejected.append({"round": rnd, "reason": "too short", "notes": len(cand)})
                continue
            rep = check_melody(cand, catalogue, config=config)
            if rep["verdict"] == "clear":
                kept.append((cand, rep))
            else:
                m = rep["matches"][0]
                rejected.append({"round": rnd, "reason": rep["verdict"], "work": m["work"],
                                 "evalue": m["score"]["evalue"], "segments": len(m["segments"])})
        rnd += 1
    return {"kept": kept, "rejected": rejected, "tried": tried}
