"""CLI commands of the catalogue lifecycle: add, remove, reembed, calibrate, list, check, audit, serve."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cli import EXIT_BLOCK, EXIT_ERROR, EXIT_OK, EXIT_REVIEW, _json_default, command
from .errors import DuplicateWorkError, InvalidInputError, LawFitBusyError, MelodyGuardError


def _catalogue_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalogue", type=Path, default=None,
                   help="catalogue directory (default $MELODYGUARD_CATALOGUE or ~/.local/share/melodyguard/catalogue)")
    p.add_argument("--weights", type=Path, default=None, help="VAE weights (default $MELODYGUARD_WEIGHTS or the shipped ones)")


def open_catalogue(a: argparse.Namespace, **kw: Any):
    from .index import Catalogue
    from .model.encoder import load_encoder

    return Catalogue(a.catalogue, encoder=load_encoder(a.weights), index_kind=getattr(a, "index_kind", None), **kw)


# --------------------------------------------------------------------------- add
def _setup_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path, help="MIDI or audio files, or folders of them (searched recursively)")
    p.add_argument("--manifest", type=Path, help="CSV with columns path,title,owner,external_id")
    p.add_argument("--title")
    p.add_argument("--owner", default="")
    p.add_argument("--external-id")
    p.add_argument("--private", action="store_true", help="matched, but its metadata is not shown to others")
    p.add_argument("--from-corpus", nargs="+", metavar="COLLECTION",
                   help="import tunes of these corpus-cache collections (e.g. oneills1850 ryansMammoth)")
    p.add_argument("--limit", type=int, default=None, help="with --from-corpus: at most this many tunes")
    p.add_argument("--index-kind", choices=["auto", "flat", "ivf", "hnsw"], default=None,
                   help="FAISS index, kept in the catalogue: auto (new catalogues: exact up to 100,000 window "
                        "vectors, IVF beyond), flat, ivf or hnsw")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not fit the catalogue's own chance law (done when it reaches 100 works and whenever it "
                        "has doubled or halved since; see `melodyguard calibrate`)")
    p.add_argument("--quiet", action="store_true")
    _catalogue_arg(p)


def progress_bar(desc: str, unit: str, *, quiet: bool) -> tuple[Any, Callable[[int, int], None]]:
    """A tqdm bar on stderr and the ``progress(done, total)`` callback the library calls."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, disable=quiet, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, progress


def refresh_law(cat: Any, *, quiet: bool, skip: bool = False) -> dict[str, Any]:
    """Fit the catalogue's chance law when :func:`~melodyguard.decoys.law_needs_fit` says so;
    what the summary line says of the law in force."""
    from .decoys import catalogue_law, fit_catalogue_law, law_needs_fit, law_summary

    fitted_now = False
    if not skip and law_needs_fit(cat):
        bar, progress = progress_bar("calibrate (decoys)", "check", quiet=quiet)
        try:
            fit_catalogue_law(cat, progress=progress)
            fitted_now = True
        except LawFitBusyError as exc:  # a server worker or another `add` is fitting it: that law will do
            if not quiet:
                print(f"calibrate: skipped: {exc}", file=sys.stderr)
        finally:
            bar.close()
    law = catalogue_law(cat)
    out = law_summary(law)
    return out if law is None else {**out, "fitted_now": fitted_now}


def _add_from_corpus(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .corpus import COLLECTIONS, load_corpus

    bad = [c for c in a.from_corpus if c not in COLLECTIONS]
    if bad:
        raise InvalidInputError(f"unknown collection(s) {bad}; choose from {sorted(COLLECTIONS)}")
    tunes = load_corpus(collections=a.from_corpus)[: a.limit]
    cat = open_catalogue(a)
    before = cat.count()
    for b in tqdm(range(0, len(tunes), 200), desc="add", unit="batch", disable=a.quiet, file=sys.stderr):
        cat.add_melodies([{"melody": t.melody, "sha256": "corpus:" + t.key, "title": t.title, "external_id": t.key,
                           "owner": t.collection} for t in tunes[b:b + 200]], skip_duplicates=True)
    cat.index()
    law = refresh_law(cat, quiet=a.quiet, skip=a.no_calibrate)
    print(json.dumps({"added": cat.count() - before, "works": cat.count(), "law": law}))
    return EXIT_OK


def _expand_folders(paths: list[Path]) -> list[Path]:
    """Files as given (missing ones too: each fails on its own); folders replaced by the MIDI
    and audio files under them, sorted. A folder without any is an error."""
    from .audit import AUDIO_EXT, MIDI_EXT

    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MIDI_EXT | AUDIO_EXT)
            if not found:
                raise InvalidInputError(f"{p} is a folder without MIDI or audio files")
            out += found
        else:
            out.append(p)
    return out


def _cmd_add(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    if a.from_corpus:
        return _add_from_corpus(a)

    jobs: list[dict[str, Any]] = []
    if a.manifest:
        if not a.manifest.is_file():
            raise InvalidInputError(f"no such manifest: {a.manifest}")
        with open(a.manifest, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise InvalidInputError(f"{a.manifest} needs a header with at least a 'path' column; got {reader.fieldnames}")
            for row in reader:
                path = Path(row["path"])
                if not path.is_absolute():
                    path = a.manifest.parent / path
                jobs.append({"path": path, "title": row.get("title") or None, "owner": row.get("owner") or "",
                             "external_id": row.get("external_id") or None})
    paths = _expand_folders(a.paths)
    for p in paths:
        jobs.append({"path": p, "title": a.title if len(paths) == 1 else None, "owner": a.owner,
                     "external_id": a.external_id if len(paths) == 1 else None})
    if not jobs:
        raise InvalidInputError("nothing to add: give file paths or --manifest works.csv")
    cat = open_catalogue(a)
    failed: list[tuple[str, str]] = []
    added = skipped = 0
    for job in tqdm(jobs, desc="add", unit="file", disable=a.quiet or len(jobs) < 2, file=sys.stderr):
        try:
            w = cat.add(job["path"], title=job["title"], owner=job["owner"], external_id=job["external_id"], private=a.private)
            added += 1
            if len(jobs) <= 20 and not a.quiet:
                print(json.dumps({"added": w.id, "title": w.title, "owner": w.owner, "notes": w.n_notes}))
        except DuplicateWorkError as exc:
            skipped += 1
            print(json.dumps({"skipped": str(job["path"]), "reason": str(exc), "existing_id": exc.existing_id}))
        except MelodyGuardError as exc:
            failed.append((str(job["path"]), str(exc)))
    cat.index()  # bring the FAISS index up to date once
    law = refresh_law(cat, quiet=a.quiet, skip=a.no_calibrate or not added)
    print(json.dumps({"added": added, "skipped_duplicates": skipped, "failed": len(failed), "works": cat.count(),
                      "law": law}))
    for failed_path, err in failed:
        print(f"failed: {failed_path}: {err}", file=sys.stderr)
    return EXIT_ERROR if failed else EXIT_OK


_cmd_add.setup = _setup_add  # type: ignore[attr-defined]
command("add", "register works (files or a CSV manifest) in the catalogue")(_cmd_add)


# --------------------------------------------------------------------------- remove / list
def _setup_remove(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int)
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not refit the catalogue's chance law (done when the catalogue has halved since it "
                        "was fitted, as `add` does when it has doubled)")
    p.add_argument("--quiet", action="store_true")
    _catalogue_arg(p)


def _cmd_remove(a: argparse.Namespace) -> int:
    cat = open_catalogue(a)
    w = cat.remove(a.id)
    cat.index()
    law = refresh_law(cat, quiet=a.quiet, skip=a.no_calibrate)
    print(json.dumps({"removed": w.id, "title": w.title, "works": cat.count(), "law": law}))
    return EXIT_OK


_cmd_remove.setup = _setup_remove  # type: ignore[attr-defined]
command("remove", "remove a work and its vectors")(_cmd_remove)


def _setup_reembed(p: argparse.ArgumentParser) -> None:
    _catalogue_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_reembed(a: argparse.Namespace) -> int:
    bar, progress = progress_bar("reembed", "work", quiet=a.quiet)
    cat = open_catalogue(a, reembed=True, progress=progress)
    bar.close()
    cat.index()  # the FAISS index of the new vectors, built once here rather than on the first query
    done = cat.reembedded or {"works": 0, "windows": 0, "from": cat.encoder.fingerprint, "to": cat.encoder.fingerprint,
                              "seconds": 0.0}
    print(json.dumps({**done, "works_in_catalogue": cat.count(), "changed": cat.reembedded is not None}))
    return EXIT_OK


_cmd_reembed.setup = _setup_reembed  # type: ignore[attr-defined]
command("reembed", "embed every work again with these weights (after an upgrade changed the fingerprint)")(_cmd_reembed)


def _setup_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoys", type=int, default=600, help="works played backwards to fit on (at least 100)")
    p.add_argument("--target", type=float, default=0.005,
                   help="share of decoys the review threshold may flag (default 0.005)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", action="store_true", help="print the catalogue's law without fitting")
    p.add_argument("--clear", action="store_true", help="forget the catalogue's law (use the shipped one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _catalogue_arg(p)


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from .decoys import catalogue_law, clear_catalogue_law, fit_catalogue_law, law_summary

    cat = open_catalogue(a)
    if a.show or a.clear:
        if a.show and a.clear:
            raise InvalidInputError("--show and --clear exclude each other")
        if a.clear:
            print(json.dumps({"cleared": clear_catalogue_law(cat)}))
            return EXIT_OK
        law = catalogue_law(cat)
        print(json.dumps(law.info if law else law_summary(None)))
        return EXIT_OK
    bar, progress = progress_bar("decoys", "check", quiet=a.quiet)
    law = fit_catalogue_law(cat, decoys=a.decoys, target=a.target, seed=a.seed, progress=progress)
    bar.close()
    print(json.dumps(law.info))
    return EXIT_OK


_cmd_calibrate.setup = _setup_calibrate  # type: ignore[attr-defined]
command("calibrate", "fit the catalogue's own chance law on its works played backwards (decoys)")(_cmd_calibrate)


def _setup_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--owner")
    p.add_argument("--limit", type=int)
    p.add_argument("--offset", type=int, default=0)
    _catalogue_arg(p)


def _cmd_list(a: argparse.Namespace) -> int:
    cat = open_catalogue(a)
    works = cat.works(owner=a.owner, limit=a.limit, offset=a.offset)
    if a.json:
        print(json.dumps([w.to_dict() for w in works]))
    else:
        print(f"{'id':>6}  {'notes':>5}  {'owner':<16} {'external_id':<14} title")
        for w in works:
            print(f"{w.id:>6}  {w.n_notes:>5}  {w.owner[:16]:<16} {(w.external_id or '')[:14]:<14} {w.title}")
        print(f"{cat.count(owner=a.owner)} works")
    return EXIT_OK


_cmd_list.setup = _setup_list  # type: ignore[attr-defined]
command("list", "list the catalogue's works")(_cmd_list)


# --------------------------------------------------------------------------- check
_SEVERITY = {"clear": (0, EXIT_OK), "error": (1, EXIT_ERROR), "review": (2, EXIT_REVIEW), "block": (3, EXIT_BLOCK)}


def _setup_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, help="MIDI or audio files, or folders of them")
    p.add_argument("--json", action="store_true", help="one JSON report per line")
    p.add_argument("--all-matches", action="store_true",
                   help="text output: also list the candidates below the review threshold (JSON and HTML always do)")
    p.add_argument("--html", type=Path, help="write an HTML evidence report (one file: this path; several: a folder)")
    p.add_argument("--review-evalue", type=float, default=None)
    p.add_argument("--block-evalue", type=float, default=None)
    p.add_argument("--tracks", choices=["melody", "all"], default="all",
                   help="MIDI: check every pitched line (default; a copy may hide in an inner voice; E-values are "
                        "corrected for the lines checked), or the melody line only (about 3x faster)")
    _catalogue_arg(p)


def describe(rep: dict[str, Any], *, all_matches: bool = False) -> str:
    """One plain-language paragraph for a report: every ``review`` or ``block`` match, then one
    line for the weaker candidates (each of them too with ``all_matches``)."""
    from .evidence import match_sentence, short_query_note

    q = rep["query"]
    lines = [f"{q.get('path', '<query>')}: {rep['verdict'].upper()} ({q['n_notes']} notes)"]
    shown = [m for m in rep["matches"] if all_matches or m["verdict"] != "clear"]
    for m in shown:
        stock = " [stock material]" if m["stock"]["is_stock"] else ""
        where = match_sentence(m, seconds=q.get("source") == "audio", beats=bool(q.get("has_beats", True)))
        lines.append(f"  [{m['verdict']}] {where}; E-value {m['score']['evalue']:.3g}{stock}")
    weak = [] if all_matches else [m for m in rep["matches"] if m["verdict"] == "clear"]
    if weak:
        best = min(weak, key=lambda m: m["score"]["evalue"])
        review = rep.get("thresholds", {}).get("review_evalue")
        head = f"nothing reaches the review threshold (E <= {review:g}); " if not shown and review else ""
        lines.append(f"  {head}{len(weak)} weaker candidate{'s' if len(weak) > 1 else ''} "
                     f"(best: '{best['work']['title']}', E-value {best['score']['evalue']:.3g}); "
                     f"--all-matches, --json or --html list {'them' if len(weak) > 1 else 'it'}")
    if not rep["matches"]:
        lines.append("  no candidate matches")
    note = short_query_note(rep)
    if note is not None:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _cmd_check(a: argparse.Namespace) -> int:
    import dataclasses

    from .detect import DEFAULT_DETECT, check_file

    cfg = DEFAULT_DETECT
    if a.review_evalue is not None:
        cfg = dataclasses.replace(cfg, review_evalue=a.review_evalue)
    if a.block_evalue is not None:
        cfg = dataclasses.replace(cfg, block_evalue=a.block_evalue)
    from .index import require_works

    files = _expand_folders(a.files)
    # An empty (or mistyped) catalogue is an error, never a run of "clear"; checked before opening
    # it, which would create the directory.
    require_works(a.catalogue)
    cat = open_catalogue(a)
    cat.index()
    worst = "clear"
    for i, path in enumerate(files):
        try:
            rep = check_file(path, cat, config=cfg, tracks=a.tracks)
            verdict = rep["verdict"]
        except MelodyGuardError as exc:
            rep = {"query": {"path": str(path)}, "verdict": "error", "error": f"{type(exc).__name__}: {exc}"}
            verdict = "error"
            print(f"melodyguard: error: {path}: {exc}", file=sys.stderr)
        if _SEVERITY[verdict][0] > _SEVERITY[worst][0]:
            worst = verdict
        if a.json:
            print(json.dumps(rep, default=_json_default))
        elif verdict != "error":
            print(describe(rep, all_matches=a.all_matches))
        if a.html and verdict != "error":
            from .evidence import write_html_report

            out = a.html if len(files) == 1 else a.html / f"{i:04d}_{Path(path).stem}.html"
            write_html_report(rep, cat, out, query_source=path)
            if not a.json:
                print(f"  HTML report: {out}")
    return _SEVERITY[worst][1]


_cmd_check.setup = _setup_check  # type: ignore[attr-defined]
command("check", "check files against the catalogue; exit 0 clear, 10 review, 20 block, 3 error")(_cmd_check)


def _cmd_schema(a: argparse.Namespace) -> int:
    from .schema import report_json_schema

    print(json.dumps(report_json_schema(), indent=2))
    return EXIT_OK


_cmd_schema.setup = lambda p: None  # type: ignore[attr-defined]
command("schema", "print the JSON Schema of check's reports (melodyguard.report/1)")(_cmd_schema)


# --------------------------------------------------------------------------- audit
def _setup_audit(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path, help="files or folders (searched for MIDI and audio)")
    p.add_argument("--manifest", type=Path, help="CSV with a 'path' column")
    p.add_argument("--out", type=Path, help="output folder (re-run with the same folder to resume)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--self", dest="self_audit", action="store_true",
                   help="list clusters of near-duplicate works inside the catalogue")
    p.add_argument("--no-html", action="store_true", help="skip the per-file evidence pages")
    p.add_argument("--tracks", choices=["melody", "all"], default="all",
                   help="MIDI: every pitched line (default), or the melody line only (as for check)")
    p.add_argument("--quiet", action="store_true")
    _catalogue_arg(p)


def _cmd_audit(a: argparse.Namespace) -> int:
    from .audit import collect_files, run_audit, self_audit

    if a.self_audit:
        cat = open_catalogue(a)
        clusters = self_audit(cat, progress=not a.quiet)
        if a.out:
            a.out.mkdir(parents=True, exist_ok=True)
            (a.out / "self_audit.json").write_text(json.dumps(clusters, indent=2, default=float))
        for c in clusters:
            names = " | ".join(f"#{w['id']} {w['title']}" for w in c["works"])
            print(f"{len(c['works'])} works, best E-value {c['best_evalue']:.3g}: {names}")
        print(json.dumps({"clusters": len(clusters), "works_in_clusters": sum(len(c["works"]) for c in clusters)}))
        return EXIT_OK
    if not a.out:
        raise InvalidInputError("audit needs --out DIR (or --self)")
    files = collect_files(a.paths, manifest=a.manifest)
    if not files:
        raise InvalidInputError("nothing to audit: give files, folders or --manifest")
    from .config import catalogue_dir

    stats = run_audit(files, a.catalogue or catalogue_dir(), a.out, jobs=a.jobs, weights=a.weights,
                      progress=not a.quiet, html_evidence=not a.no_html, tracks=a.tracks)
    print(json.dumps(stats))
    print(f"report: {a.out / 'report.html'}")
    return EXIT_OK


_cmd_audit.setup = _setup_audit  # type: ignore[attr-defined]
command("audit", "check many files (resumable, parallel) or the catalogue itself (--self)")(_cmd_audit)


# --------------------------------------------------------------------------- serve
def _setup_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model; they share the catalogue)")
    _catalogue_arg(p)


def _cmd_serve(a: argparse.Namespace) -> int:
    import os

    import uvicorn

    if a.catalogue:
        os.environ["MELODYGUARD_CATALOGUE"] = str(a.catalogue)
    if a.weights:
        os.environ["MELODYGUARD_WEIGHTS"] = str(a.weights)
    uvicorn.run("melodyguard.api.app:create_app", factory=True, host=a.host, port=a.port, workers=a.workers,
                log_config=serve_log_config())
    return EXIT_OK


def serve_log_config() -> dict[str, Any]:
    """uvicorn's logging setup, with melodyguard's server log (``melodyguard.api``: background
    law refits, audit jobs) printed by its handler, at INFO."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["melodyguard"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return cfg


_cmd_serve.setup = _setup_serve  # type: ignore[attr-defined]
command("serve", "serve the HTTP API (FastAPI + uvicorn)")(_cmd_serve)
