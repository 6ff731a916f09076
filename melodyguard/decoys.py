"""A catalogue's own chance law, fitted on decoys (the target-decoy method of proteomics).

The shipped E-value law (``calibration.json``) was fitted on random pairs of training-split
tunes. How often chance alone reaches a given E-value also depends on the catalogue's style:
in a catalogue of Irish dance tunes, whose reels and jigs share stock runs and arpeggios, the
default ``review`` threshold flags about 7 % of same-style decoys, against 0.2-0.8 % in a
catalogue of Essen folk songs (docs/benchmarks.md).

:func:`fit_catalogue_law` measures that in the catalogue itself. Each decoy is a catalogue work
played backwards (:func:`retrograde`): the same steps, leaps and durations as the catalogue's
style, but no phrase of any real tune. It is checked against the catalogue under the shipped
law, with its own work left out and the works the review threshold calls its relatives (the
source checked forwards; variants of a tune keep its symmetric passages, which the backwards
copy still holds). The catalogue's law multiplies every E-value by a factor >= 1, the larger
of two estimates of where ``target`` of the decoys reach the review threshold: the empirical
one (the smallest factor that leaves at most ``target`` of them flagged, the boundary midway,
in log scale, between the last decoy allowed and the first not) and a power law fitted to the
decoys' lower tail (:func:`_tail_fit`), which is steadier because the empirical one rests on
the three or four smallest E-values of 600. The factor only ever makes verdicts stricter, and
as it multiplies every E-value of the catalogue alike, the ranking of matches is unchanged.

The law is stored in the catalogue's SQLite ``meta`` table (name ``null_law``, versioned) with
what it was fitted under: the shipped law's id, the encoder, the review threshold, the number
of works. ``melodyguard add`` fits it when a catalogue reaches :data:`MIN_DECOY_WORKS` works
and again whenever the catalogue has doubled since, ``melodyguard remove`` when it has halved
(:func:`law_needs_fit`; ``--no-calibrate`` skips it, ``melodyguard calibrate`` fits it on
demand; the HTTP API refits it in a background thread by the same rule). :func:`catalogue_law` returns it only while the
shipped law and encoder are the same ones; reports say which law was used (``catalogue.law``).

One fit at a time per catalogue: a fit that stores its law holds a lease in the catalogue
(``law_fit_lease``, renewed as it goes, with its progress; it runs out
:data:`LEASE_SECONDS` after a process dies), so server workers and ``add`` in other processes
do not fit it twice at once; they get :class:`~melodyguard.errors.LawFitBusyError` and can read
the fit's progress with :func:`law_fit_under_way`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import DEFAULT_MIN_NOTES
from .errors import CatalogueError, InvalidInputError, LawFitBusyError
from .fingerprint.melody import Melody

__all__ = ["NULL_LAW_FORMAT", "MIN_DECOY_WORKS", "CatalogueLaw", "retrograde", "law_id", "check_decoy", "fit_catalogue_law",
           "catalogue_law", "law_summary", "law_needs_fit", "clear_catalogue_law", "law_fit_under_way",
           "LEASE_SECONDS"]

#: 2: the factor is the larger of the empirical one and the tail fit's (1: empirical only)
NULL_LAW_FORMAT = 2
#: stored formats still used (a format-1 factor is never stricter than a format-2 one on the
#: same decoys, so it stays in force until the next fit rather than fall back to the shipped law)
_READ_FORMATS = (1, 2)
#: fewest works (decoys) a law is fitted on: with fewer, the few smallest decoy E-values that
#: set the factor are too few to say anything
MIN_DECOY_WORKS = 100
_META_NAME = "null_law"
#: matches of a decoy's source examined for relatives (see fit_catalogue_law)
RELATIVES_CHECKED = 50
#: the tail fit (:func:`_tail_fit`) uses the smallest TAIL_SHARE of the decoy E-values, and
#: at least TAIL_MIN of them, all below 1
TAIL_SHARE = 0.1
TAIL_MIN = 30
#: the lease of a fit that stores its law (see the module doc): it lasts this long after its
#: last renewal, and is renewed every LEASE_RENEW seconds with the fit's progress
_LEASE_NAME = "law_fit_lease"
LEASE_SECONDS = 120.0
LEASE_RENEW = 5.0


@dataclass(frozen=True)
class CatalogueLaw:
    """A fitted law: E-values of this catalogue are multiplied by ``factor``."""

    factor: float
    info: dict[str, Any]

    def public(self) -> dict[str, Any]:
        """What a report says about it."""
        return {"source": "catalogue decoys", "factor": round(self.factor, 4),
                "fitted_works": int(self.info["works"]), "decoys": int(self.info["decoys"]),
                "target": float(self.info["target"]), "fitted_at": self.info["fitted_at"]}


def retrograde(melody: Melody) -> Melody:
    """The melody backwards, pitches and rhythm (a decoy): same intervals (mirrored in time),
    steps, leaps and durations as the style it comes from, but no phrase of any real tune."""
    p = np.asarray(melody.pitches)
    o = np.asarray(melody.onsets_beats, dtype=float)
    d = np.asarray(melody.durations_beats, dtype=float)
    end = o + d
    return Melody.from_notes(p[::-1].copy(), (end.max() - end)[::-1].copy(), d[::-1].copy())


_LAW_IDS: dict[int, tuple[Any, str]] = {}


def law_id(cal: Any) -> str:
    """A short id of a shipped law (lambda, K, the collapsed law and the scoring it belongs to)."""
    kept = _LAW_IDS.get(id(cal))
    if kept is not None and kept[0] is cal:
        return kept[1]
    d = {"lambda": cal.lam, "K": cal.K, "collapsed": cal.info.get("collapsed"), "scoring": cal.info.get("scoring")}
    out = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    _LAW_IDS[id(cal)] = (cal, out)
    return out


def _factor(evalues: np.ndarray, *, review_evalue: float, target: float) -> float:
    """Smallest factor >= 1 after which at most floor(target * n) of ``evalues`` are <= review,
    with the boundary midway (log scale) between the last allowed decoy and the next."""
    e = np.sort(np.asarray(evalues, dtype=float))
    allowed = int(math.floor(target * e.size + 1e-9))
    if allowed >= e.size:
        return 1.0
    nxt = max(float(e[allowed]), 1e-300)
    # The first decoy that must stay unflagged sits at e[allowed]; the last that may be flagged
    # at e[allowed - 1] (none allowed: the boundary is half the smallest decoy E-value).
    prev = max(float(e[allowed - 1]), 1e-300) if allowed else nxt / 4.0
    boundary = math.sqrt(prev * nxt)
    return max(1.0, review_evalue / boundary)


def _tail_fit(evalues: np.ndarray, *, review_evalue: float, target: float) -> tuple[float, float] | None:
    """``(factor, slope)`` from a power law fitted to the decoys' lower tail, or None when
    there are too few small E-values to fit.

    If chance in this catalogue follows the shipped law's form with another scale (λ' for λ),
    the shipped E-values of decoys obey ``P(E <= t) = c * t**b`` for small t, with
    ``b = λ'/λ``. A least-squares line through ``log10 E`` against ``log10`` of the empirical
    CDF of the smallest :data:`TAIL_SHARE` of the decoys (mid-ranks, every decoy counted in the
    denominator) gives ``c`` and ``b``, and the factor that puts the review threshold where
    that line reaches ``target``. It uses some 60 decoys where the empirical quantile uses the
    3 or 4 smallest: on the training split's dance tunes (916 decoys), the factor of 600 drawn
    from them ranged 3.4-164 (10th-90th percentile) empirically and 12-120 from the tail fit,
    and the flagged share of all 916 exceeded 1 % in 7.0 % of draws against 0.7 %.
    """
    e = np.sort(np.asarray(evalues, dtype=float))
    n = e.size
    k = max(int(math.ceil(TAIL_SHARE * n)), TAIL_MIN)
    small = e[:k][e[:k] < 1.0]
    if small.size < TAIL_MIN:
        return None
    x = np.log10(np.clip(small, 1e-300, None))
    if float(np.ptp(x)) < 1e-6:
        return None
    y = np.log10((np.arange(1, small.size + 1) - 0.5) / n)
    b, a = (float(v) for v in np.polyfit(x, y, 1))
    if not b > 0:
        return None
    log_e_star = (math.log10(target) - a) / b  # where the line reaches the target
    return 10.0 ** min(max(math.log10(review_evalue) - log_e_star, 0.0), 300.0), b


def check_decoy(melody: Melody, catalogue: Any, *, source: int | None = None, config: Any = None,
                law: str = "shipped") -> tuple[dict[str, Any], set[int]]:
    """Check ``melody`` played backwards against the catalogue, leaving out its ``source`` work
    (when it is one) and the works the review threshold calls its relatives (``melody`` checked
    forwards, its best :data:`RELATIVES_CHECKED` matches): a tune family's variants share the
    tune's own symmetric passages, which its backwards copy still holds. In 9.4k Essen songs,
    with only the source left out, 1.3 % of decoys were flagged, against 0.24 % of held-out
    tunes played backwards. Returns the decoy's report and the relatives left out."""
    from .detect import DEFAULT_DETECT, check_melody

    config = config or DEFAULT_DETECT
    fwd = check_melody(melody, catalogue, config=replace(config, max_matches=RELATIVES_CHECKED), exclude_work=source,
                       law="shipped")
    rel = {m["work"]["id"] for m in fwd["matches"] if m["score"]["evalue"] <= config.review_evalue}
    rep = check_melody(retrograde(melody), catalogue, config=config, exclude_work=source, exclude_works=rel, law=law)
    return rep, rel


def fit_catalogue_law(
    catalogue: Any,
    *,
    decoys: int = 600,
    target: float = 0.005,
    seed: int = 0,
    config: Any = None,
    progress: Callable[[int, int], None] | None = None,
    save: bool = True,
) -> CatalogueLaw:
    """Fit the catalogue's chance law on ``decoys`` of its works played backwards (see the
    module doc) and, with ``save``, store it in the catalogue. Takes two checks per decoy (about
    25-45 ms each at 10k works).

    Raises :class:`~melodyguard.errors.CatalogueError` when the catalogue has fewer than
    :data:`MIN_DECOY_WORKS` works long enough to judge, and
    :class:`~melodyguard.errors.LawFitBusyError` (with ``save``) when another process is
    fitting this catalogue's law: one fit at a time holds the catalogue's lease.
    """
    from .detect import DEFAULT_DETECT

    if isinstance(decoys, bool) or not isinstance(decoys, int) or decoys < MIN_DECOY_WORKS:
        raise InvalidInputError(f"decoys must be an integer >= {MIN_DECOY_WORKS}; got {decoys!r}")
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target < 0.5:
        raise InvalidInputError(f"target must be a rate in (0, 0.5); got {target!r}")
    config = config or DEFAULT_DETECT
    t0 = time.perf_counter()
    works = [w for w in catalogue.works() if w.n_notes >= DEFAULT_MIN_NOTES]
    if len(works) < MIN_DECOY_WORKS:
        raise CatalogueError(
            f"a catalogue law needs at least {MIN_DECOY_WORKS} works of {DEFAULT_MIN_NOTES} or more notes; "
            f"this catalogue has {len(works)}, so the shipped law is used")
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(works), size=min(decoys, len(works)), replace=False).tolist())
    lease = _Lease(catalogue, total=len(pick)) if save else None
    evalues, relatives = [], []
    try:
        for i, j in enumerate(pick):
            w = works[j]
            rep, rel = check_decoy(catalogue.melody(w.id), catalogue, source=w.id, config=config, law="shipped")
            relatives.append(len(rel))
            evalues.append(rep["matches"][0]["score"]["evalue"] if rep["matches"] else math.inf)
            if lease is not None:
                lease.renew(i + 1)
            if progress is not None:
                progress(i + 1, len(pick))
        e = np.asarray(evalues, dtype=float)
        law = _fitted(catalogue, e, relatives, config=config, target=target, seed=seed, t0=t0)
        if lease is not None:
            lease.renew(len(pick), force=True)  # still ours: no other fit took over while this one stalled
            catalogue.set_meta(_META_NAME, json.dumps(law.info, sort_keys=True))
    finally:
        if lease is not None:
            lease.release()
    return law


class _Lease:
    """The lease of one fit on one catalogue (see the module doc). Catalogues without leases
    (stand-ins in tests) are not locked."""

    def __init__(self, catalogue: Any, *, total: int) -> None:
        self._claim = getattr(catalogue, "claim_lease", None)
        self._release = getattr(catalogue, "release_lease", None)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.total = total
        self._renewed = -math.inf
        self.renew(0, force=True)

    def renew(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._claim is None or (not force and now - self._renewed < LEASE_RENEW):
            return
        other = self._claim(_LEASE_NAME, self.holder, seconds=LEASE_SECONDS, note={"done": done, "total": self.total})
        if other is not None:
            self._claim = None  # not ours: nothing to release
            note = other.get("note") or {}
            raise LawFitBusyError(
                f"another fit of this catalogue's chance law is under way (pid {other.get('pid')} on "
                f"{other.get('host')}, {note.get('done', '?')} of {note.get('total', '?')} decoys checked); "
                "its law is stored when it finishes", holder=other)
        self._renewed = now

    def release(self) -> None:
        if self._claim is not None and self._release is not None:
            self._release(_LEASE_NAME, self.holder)


def law_fit_under_way(catalogue: Any) -> dict[str, Any] | None:
    """The fit of this catalogue's law under way in any process: ``{"done", "total", "pid",
    "host"}`` as of its last renewal (every few seconds), or None."""
    read = getattr(catalogue, "lease", None)
    held = read(_LEASE_NAME) if read is not None else None
    if held is None:
        return None
    note = held.get("note") or {}
    return {"done": int(note.get("done", 0)), "total": int(note.get("total", 0)),
            "pid": held.get("pid"), "host": held.get("host")}


def _fitted(catalogue: Any, e: np.ndarray, relatives: list[int], *, config: Any, target: float, seed: int,
            t0: float) -> CatalogueLaw:
    """The law of the decoy E-values ``e`` (see :func:`fit_catalogue_law`)."""
    from .detect import load_calibration

    empirical = _factor(e, review_evalue=config.review_evalue, target=target)
    tail = _tail_fit(e, review_evalue=config.review_evalue, target=target)
    factor = max(empirical, tail[0]) if tail is not None else empirical
    cal = load_calibration()
    info = {
        "format": NULL_LAW_FORMAT,
        "factor": factor,
        "factor_empirical": empirical,
        "factor_tail_fit": None if tail is None else tail[0],
        "tail_slope": None if tail is None else round(tail[1], 4),
        "target": float(target),
        "decoys": int(e.size),
        "seed": int(seed),
        "works": int(catalogue.count()),
        "review_evalue": config.review_evalue,
        "block_evalue": config.block_evalue,
        "flagged_before": round(float(np.mean(e <= config.review_evalue)), 4),
        "flagged_after": round(float(np.mean(e * factor <= config.review_evalue)), 4),
        "blocked_before": round(float(np.mean(e <= config.block_evalue)), 4),
        "blocked_after": round(float(np.mean(e * factor <= config.block_evalue)), 4),
        "relatives_left_out_mean": round(float(np.mean(relatives)), 2),
        "decoys_with_relatives": round(float(np.mean(np.asarray(relatives) > 0)), 4),
        # decoys without any match count as E = 1e300 here (the stored JSON stays finite)
        "decoy_log10_e_quantiles": {str(q): round(float(np.log10(np.quantile(np.clip(e, 1e-300, 1e300), q))), 3)
                                    for q in (0.005, 0.01, 0.05, 0.1, 0.5)},
        "shipped_law": law_id(cal),
        "encoder": catalogue.encoder.fingerprint,
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return CatalogueLaw(factor, info)


def catalogue_law(catalogue: Any) -> CatalogueLaw | None:
    """The catalogue's fitted law, or None: none fitted, or fitted under another shipped law,
    encoder or an unknown law format (then the shipped law is used until it is fitted again)."""
    from .detect import load_calibration

    get = getattr(catalogue, "get_meta", None)
    raw = get(_META_NAME) if get is not None else None
    if not raw:
        return None
    try:
        info = json.loads(raw)
        factor = float(info["factor"])
    except (ValueError, KeyError, TypeError):
        return None
    if (info.get("format") not in _READ_FORMATS or info.get("shipped_law") != law_id(load_calibration())
            or info.get("encoder") != catalogue.encoder.fingerprint or not math.isfinite(factor) or factor < 1.0):
        return None
    return CatalogueLaw(factor, info)


def law_summary(law: CatalogueLaw | None) -> dict[str, Any]:
    """What reports, the API and the CLI say of the law in force: the catalogue's, or the shipped one."""
    return law.public() if law is not None else {"source": "shipped", "factor": 1.0}


def law_needs_fit(catalogue: Any, *, growth: float = 2.0) -> bool:
    """True when the catalogue is large enough for a law of its own (:data:`MIN_DECOY_WORKS`
    works) and has no usable one, one of an older format, or has grown or shrunk by ``growth``
    times since it was fitted (``melodyguard add`` and ``remove`` then fit it again)."""
    n = catalogue.count()
    if n < MIN_DECOY_WORKS:
        return False
    law = catalogue_law(catalogue)
    if law is None or law.info.get("format") != NULL_LAW_FORMAT:
        return True
    fitted = max(int(law.info.get("works", 0)), 1)
    return n >= growth * fitted or n * growth <= fitted


def clear_catalogue_law(catalogue: Any) -> bool:
    """Forget the catalogue's fitted law (the shipped law is used again). True if there was one."""
    return bool(catalogue.delete_meta(_META_NAME))
