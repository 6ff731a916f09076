"""Batch audits: many files against the catalogue, resumable, with ranked reports; and self-audits.

Output folder of :func:`run_audit`::

    results.jsonl     one JSON report per file (the detection report schema), or an error record
    summary.csv       file, verdict, top work, E-value, segments, error, too_short_to_judge
    report.html       files ranked by risk, linking each flagged file's evidence page
    evidence/*.html   one evidence page per file with a match

``results.jsonl`` is appended to and flushed per file, so an interrupted audit re-run with the
same output folder skips every file already in it (a half-written last line is dropped).
"""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from ._interrupt import sigint_as_flag
from .errors import InvalidInputError, MelodyGuardError
from .evidence import _CSS, bar_span, short_query_note, write_html_report

__all__ = ["collect_files", "run_audit", "self_audit", "write_summary"]

AUDIO_EXT = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".aif", ".aiff", ".m4a"}
MIDI_EXT = {".mid", ".midi", ".kar", ".smf"}
_RISK = {"block": 0, "review": 1, "error": 2, "clear": 3}


def collect_files(paths: Iterable[Path], *, manifest: Path | None = None) -> list[Path]:
    """Files to audit: given files, MIDI/audio files under given folders, and a CSV's ``path`` column."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in MIDI_EXT | AUDIO_EXT and f.is_file())
        elif p.exists():
            out.append(p)
        else:
            raise InvalidInputError(f"no such file or folder: {p}")
    if manifest is not None:
        if not manifest.is_file():
            raise InvalidInputError(f"no such manifest: {manifest}")
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InvalidInputError(f"{manifest} needs a 'path' column; got {reader.fieldnames}")
            for row in reader:
                q = Path(row["path"])
                out.append(q if q.is_absolute() else manifest.parent / q)
    seen: set[str] = set()
    uniq: list[Path] = []
    for path in out:
        k = str(path.resolve())
        if k not in seen:
            seen.add(k)
            uniq.append(path)
    return uniq


def _read_done(results: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not results.exists():
        return done
    good: list[str] = []
    with open(results, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a half-written last line from an interruption
            done[rec["query"]["path"]] = rec
            good.append(line if line.endswith("\n") else line + "\n")
    with open(results, "w", encoding="utf-8") as f:
        f.writelines(good)
    return done


# Worker state: one catalogue per process, opened once.
_W: dict[str, Any] = {}


def _init_worker(cat_dir: str, weights: str | None, ignore_sigint: bool = False, tracks: str = "all") -> None:
    import signal

    if ignore_sigint:  # the parent handles Ctrl-C and stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    from .config import set_native_threads
    from .index import Catalogue
    from .model.encoder import load_encoder

    set_native_threads(1)
    _W["tracks"] = tracks
    _W["cat"] = Catalogue(cat_dir, encoder=load_encoder(weights), persist_index=False)
    _W["cat"].index()


def _check_one(path: str) -> dict[str, Any]:
    from .detect import check_file

    try:
        rep = check_file(path, _W["cat"], tracks=_W.get("tracks", "all"))
        rep["query"]["path"] = path
        return rep
    except MelodyGuardError as exc:
        return {"query": {"path": path}, "verdict": "error", "error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # an audit never stops for one file
        return {"query": {"path": path}, "verdict": "error", "error": f"unexpected {type(exc).__name__}: {exc}"}


def run_audit(
    files: Sequence[Path],
    catalogue_dir: Path,
    out: Path,
    *,
    jobs: int = 1,
    weights: Path | None = None,
    progress: bool = True,
    html_evidence: bool = True,
    limit: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    tracks: str = "all",
) -> dict[str, Any]:
    """Audit ``files`` into ``out``; resumes from ``out/results.jsonl``. Returns counts.

    ``tracks="all"`` checks every pitched line of MIDI files (see :func:`melodyguard.detect.check_tracks`).

    Only one audit may write to ``out`` at a time (a lock file guards it).
    """
    import fcntl

    from .detect import TRACK_MODES

    if tracks not in TRACK_MODES:
        raise InvalidInputError(f"tracks must be one of {TRACK_MODES}; got {tracks!r}")
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise InvalidInputError(f"another audit is writing to {out}; wait for it or choose another --out") from None
    try:
        return _run_audit_locked(files, catalogue_dir, out, jobs=jobs, weights=weights, progress=progress,
                                 html_evidence=html_evidence, limit=limit, on_result=on_result, tracks=tracks)
    finally:
        lock.close()


def _run_audit_locked(
    files: Sequence[Path],
    catalogue_dir: Path,
    out: Path,
    *,
    jobs: int,
    weights: Path | None,
    progress: bool,
    html_evidence: bool,
    limit: int | None,
    on_result: Callable[[dict[str, Any]], None] | None,
    tracks: str = "all",
) -> dict[str, Any]:
    from tqdm import tqdm

    results = out / "results.jsonl"
    done = _read_done(results)
    _check_settings(out, {"tracks": tracks}, resuming=bool(done))
    todo = [str(f) for f in files if str(f) not in done]
    if limit is not None:
        todo = todo[:limit]
    if todo:  # every file would fail the same way, and be recorded as done
        from .index import require_works

        require_works(catalogue_dir)
    bar = tqdm(total=len(files), initial=len(files) - len([f for f in files if str(f) not in done]),
               desc="audit", unit="file", disable=not progress)
    with open(results, "a", encoding="utf-8") as fh:
        def write(rec: dict[str, Any]) -> None:
            fh.write(json.dumps(rec, default=float) + "\n")
            fh.flush()
            done[rec["query"]["path"]] = rec
            bar.update(1)
            if on_result:
                on_result(rec)

        if jobs <= 1:
            _init_worker(str(catalogue_dir), str(weights) if weights else None, False, tracks)
            for p in todo:
                write(_check_one(p))
        else:
            ex = ProcessPoolExecutor(jobs, initializer=_init_worker,
                                     initargs=(str(catalogue_dir), str(weights) if weights else None, True, tracks))
            with sigint_as_flag() as interrupted:
                try:
                    pending = {ex.submit(_check_one, p) for p in todo}
                    while pending:
                        finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            write(fut.result())
                        if interrupted.is_set():
                            raise KeyboardInterrupt
                except BaseException:
                    # Interrupted: what is written stays; a re-run resumes after it.
                    procs = list((getattr(ex, "_processes", None) or {}).values())
                    ex.shutdown(wait=False, cancel_futures=True)
                    for proc in procs:
                        proc.terminate()
                    ex.shutdown(wait=True)  # here, where further Ctrl-Cs only set the flag, not at exit
                    raise
            ex.shutdown()
    bar.close()
    ordered = [done[str(f)] for f in files if str(f) in done]
    write_summary(ordered, out, catalogue_dir=catalogue_dir, weights=weights, html_evidence=html_evidence,
                  progress=progress)
    counts: dict[str, int] = {}
    for r in ordered:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return {"files": len(files), "checked_now": len(todo), "done": len(ordered), "verdicts": counts,
            "too_short_to_judge": sum(short_query_note(r) is not None for r in ordered)}


def _segments_text(m: dict[str, Any]) -> str:
    mode = m.get("other_mode")
    return "; ".join(
        f"query {bar_span(s['query']['bars'])} ~ ref {bar_span(s['reference']['bars'])}"
        for s in m["segments"]
    ) + (f" (in the other mode: ref {mode['reference_key']}, copy {mode['matched_in']})" if mode else "")


def _check_settings(out: Path, settings: dict[str, Any], *, resuming: bool) -> None:
    """An audit's settings are kept in ``out/audit.json``; resuming with other settings would mix
    two kinds of result in one report, so it is refused."""
    path = out / "audit.json"
    if resuming and path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        changed = {k: (old.get(k), v) for k, v in settings.items() if k in old and old[k] != v}
        if changed:
            what = ", ".join(f"--{k} {a} (now {b})" for k, (a, b) in changed.items())
            raise InvalidInputError(f"{out} holds an audit run with {what}; resume it with the same settings "
                                    "or choose another --out")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"format": 1, **settings}), encoding="utf-8")
    tmp.replace(path)


def write_summary(reports: Sequence[dict[str, Any]], out: Path, *, catalogue_dir: Path | None = None,
                  weights: Path | None = None, html_evidence: bool = True, progress: bool = False) -> None:
    """``summary.csv``, ``report.html`` and per-file evidence pages for finished reports (pages
    already written by an earlier run are kept)."""
    from tqdm import tqdm

    ranked = sorted(
        range(len(reports)),
        key=lambda i: (_RISK.get(reports[i]["verdict"], 9),
                       reports[i]["matches"][0]["score"]["evalue"] if reports[i].get("matches") else 1e300),
    )
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "verdict", "top_work_id", "top_work_title", "evalue", "segments", "error",
                    "too_short_to_judge"])
        for r in reports:
            m = r["matches"][0] if r.get("matches") else None
            w.writerow([r["query"]["path"], r["verdict"], m["work"]["id"] if m else "", m["work"]["title"] if m else "",
                        m["score"]["evalue"] if m else "", _segments_text(m) if m else "", r.get("error", ""),
                        "yes" if short_query_note(r) is not None else ""])
    cat = None
    if html_evidence and catalogue_dir is not None and any(r["verdict"] in ("block", "review") for r in reports):
        from .index import Catalogue
        from .model.encoder import load_encoder

        cat = Catalogue(catalogue_dir, encoder=load_encoder(weights), persist_index=False)
    rows = []
    ev_dir = out / "evidence"
    flagged = sum(r["verdict"] in ("block", "review") for r in reports) if cat is not None else 0
    bar = tqdm(total=flagged, desc="evidence", unit="page", disable=not progress or not flagged)
    for rank, i in enumerate(ranked):
        r = reports[i]
        link = ""
        if cat is not None and r["verdict"] in ("block", "review"):
            page = ev_dir / f"{i:05d}.html"
            if not page.exists():
                try:
                    write_html_report(r, cat, page, query_source=r["query"]["path"])
                except MelodyGuardError:
                    page = None  # type: ignore[assignment]
            bar.update()
            if page is not None:
                link = f"<a href='evidence/{page.name}'>evidence</a>"
        m = r["matches"][0] if r.get("matches") else None
        rows.append(
            f"<tr><td>{rank + 1}</td><td><span class='verdict {html.escape(r['verdict'])}'>{html.escape(r['verdict'])}</span></td>"
            f"<td>{html.escape(os.path.basename(r['query']['path']))}</td>"
            f"<td>{html.escape(m['work']['title']) if m else ''}</td><td>{m['score']['evalue'] if m else ''}</td>"
            f"<td>{html.escape(_segments_text(m)) if m else html.escape(r.get('error', ''))}</td><td>{link}</td></tr>"
        )
    bar.close()
    tally = {v: sum(r["verdict"] == v for r in reports) for v in ("block", "review", "clear", "error")}
    counts = ", ".join(f"<span class='verdict {v}'>{n} {v}</span>" for v, n in tally.items() if n) or "none"
    page_html = (
        "<!doctype html><html><head><meta charset='utf-8'><title>melodyguard audit</title>"
        f"<style>{_CSS}</style></head><body><h1>melodyguard audit</h1>"
        f"<p>{len(reports)} files, ranked by risk: {counts}.</p><table><tr><th>#</th><th>verdict</th><th>file</th>"
        "<th>top work</th><th>E-value</th><th>segments</th><th></th></tr>" + "".join(rows) + "</table></body></html>"
    )
    (out / "report.html").write_text(page_html, encoding="utf-8")


def self_audit(catalogue: Any, *, progress: bool = True, min_verdict: str = "review",
               min_coverage: float = 0.5) -> list[dict[str, Any]]:
    """Clusters of near-duplicate works inside the catalogue (duplicate registrations, one tune
    under several titles): each work is checked against the others; two works are joined when
    a match of at least ``min_verdict`` covers at least ``min_coverage`` of both, so that
    shared stock phrases do not chain unrelated tunes into one cluster."""
    from tqdm import tqdm

    from .detect import check_melody

    works = catalogue.works()
    parent = {w.id: w.id for w in works}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    levels = ("block",) if min_verdict == "block" else ("block", "review")
    edges: list[tuple[int, int, float]] = []
    for w in tqdm(works, desc="self-audit", unit="work", disable=not progress):
        rep = check_melody(catalogue.melody(w.id), catalogue, exclude_work=w.id)
        for m in rep["matches"]:
            cov = m["coverage"]
            if m["verdict"] in levels and min(cov["query"], cov["reference"]) >= min_coverage:
                other = m["work"]["id"]
                edges.append((w.id, other, m["score"]["evalue"]))
                parent[find(w.id)] = find(other)
    groups: dict[int, list[int]] = {}
    for w in works:
        groups.setdefault(find(w.id), []).append(w.id)
    by_id = {w.id: w for w in works}
    clusters = []
    for members in groups.values():
        if len(members) < 2:
            continue
        es = [e for e in edges if e[0] in members]
        clusters.append({
            "works": [{"id": i, "title": by_id[i].title, "owner": by_id[i].owner, "external_id": by_id[i].external_id}
                      for i in sorted(members)],
            "best_evalue": min(e[2] for e in es) if es else None,
        })
    clusters.sort(key=lambda c: (c["best_evalue"] if c["best_evalue"] is not None else 1.0))
    return clusters
