"""The HTTP API: a thin FastAPI layer over the library.

``create_app(settings)`` loads the encoder and opens the catalogue once, in ``lifespan``, and
starts the audit-job worker thread; registrations and deletions may start a background refit
of the catalogue's chance law (``LawRefitter``, ``Settings.auto_law``). Library errors map to
4xx responses with a ``detail`` that says what to fix; CPU-bound work runs in a thread pool,
off the event loop.

Catalogue writes are serialised (one lock per process, SQLite's write lock across processes);
reads run concurrently. Every check compares the catalogue's generation counter with the index
it holds, so a work added or deleted through one worker process is seen by the others on
their next request (delay: none beyond that request's index refresh).
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar

from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    Security,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import cap_native_threads
from ..decoys import (
    MIN_DECOY_WORKS,
    catalogue_law,
    clear_catalogue_law,
    fit_catalogue_law,
    law_fit_under_way,
    law_needs_fit,
    law_summary,
)
from ..errors import (
    ArtifactError,
    CatalogueError,
    DuplicateWorkError,
    EmptyCatalogueError,
    InputTooLargeError,
    InvalidInputError,
    MelodyGuardError,
    UnsupportedFormatError,
    WorkNotFoundError,
)
from ..fingerprint import sniff_format
from ..index import require_works
from ..schema import Report
from .jobs import JobStore, JobWorker, LawRefitter, results_csv
from .keys import KeyStore, Principal
from .limits import BodyLimitMiddleware, RateLimiter, read_zip
from .metrics import Metrics, MetricsMiddleware
from .settings import Settings
from .web import PAGE

__all__ = ["create_app", "redact_report"]


class ErrorBody(BaseModel):
    detail: Any


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Bad request", 401: "Missing or invalid API key", 403: "The key's role may not do this",
            404: "Not found (or not yours)", 409: "Already registered (works); no works to compare with (checks, "
                                                  "audits); too few works for a law of its own (catalogue law)",
            413: "Upload too large",
            415: "Not a MIDI or audio file", 422: "Invalid input", 429: "Rate limit exceeded"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


T = TypeVar("T")

#: library errors to HTTP status codes, most specific first (anything else: 400)
_STATUS: tuple[tuple[type[MelodyGuardError], int], ...] = (
    (DuplicateWorkError, 409), (EmptyCatalogueError, 409), (WorkNotFoundError, 404), (InputTooLargeError, 413),
    (UnsupportedFormatError, 415), (InvalidInputError, 422), (ArtifactError, 503), (CatalogueError, 409),
)
_AUTH_ERRORS = (401, 403, 429)
_UPLOAD_ERRORS = (400, 413, 415, 422)


def redact_report(report: dict[str, Any], viewer: Principal, catalogue: Any) -> tuple[dict[str, Any], list[bool]]:
    """What ``viewer`` may see of a report: other owners' works show only their public fields;
    other owners' private works show neither title nor owner. Returns the report and, per
    match, whether the viewer may see the reference (its piano roll)."""
    visible: list[bool] = []
    for m in report["matches"]:
        try:
            work = catalogue.get(m["work"]["id"])
        except WorkNotFoundError:  # deleted meanwhile
            work = None
        mine = work is not None and (viewer.is_admin or (viewer.role == "owner" and work.owner == viewer.owner))
        if work is None or (work.private and not mine):
            m["work"] = {"id": None, "external_id": None, "title": "(private work)", "owner": None, "private": True}
            for s in m["segments"]:
                s.pop("pairs", None)
            visible.append(False)
        else:
            m["work"] = {**work.public(), "private": work.private}
            visible.append(True)
    return report, visible


# ---------------------------------------------------------------------- auth
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")
_bearer = HTTPBearer(auto_error=False, description="the same API key as a bearer token")


def principal(
    request: Request,
    x_api_key: Annotated[str | None, Security(_api_key_header)] = None,
    auth: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> Principal:
    """The caller, from its API key (401 without a valid one; 429 over its rate limit)."""
    key = x_api_key or (auth.credentials if auth else None)
    if not key:
        raise HTTPException(401, detail="missing API key: send it in the X-API-Key header",
                            headers={"WWW-Authenticate": "Bearer"})
    who = request.app.state.keys.authenticate(key)
    if who is None:
        raise HTTPException(401, detail="invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    limiter: RateLimiter = request.app.state.limiter
    wait = limiter.take(who.key_id)
    if wait > 0:
        raise HTTPException(429, detail=f"rate limit of {limiter.rate * 60:g} requests a minute exceeded; "
                                        f"retry in {wait:.1f} s", headers={"Retry-After": str(max(1, round(wait)))})
    return who


def _role(*allowed: str) -> Any:
    def dep(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in allowed:
            raise HTTPException(403, detail=f"a {who.role} key may not do this (needs {' or '.join(allowed)})")
        return who
    return dep


Anyone = Annotated[Principal, Depends(_role("admin", "owner", "screener"))]
Writer = Annotated[Principal, Depends(_role("admin", "owner"))]
Admin = Annotated[Principal, Depends(_role("admin"))]
WorkId = Annotated[int, Path(ge=1, le=2**62)]
JobId = Annotated[str, Path(pattern="^[0-9a-f]{32}$")]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    limiter = RateLimiter(per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst)

    def capped(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn`` with this thread's native calls capped at ``settings.threads`` (OpenMP's
        count is per thread, so each pool thread sets its own; see ``set_native_threads``)."""
        cap_native_threads(settings.threads)
        return fn(*args, **kw)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ..index import Catalogue
        from ..model.encoder import load_encoder

        enc = load_encoder(settings.weights)
        cat = Catalogue(settings.catalogue, encoder=enc)
        await run_in_threadpool(capped, cat.index)
        keys = KeyStore(settings.api_db)
        jobs = JobStore(settings.api_db, settings.jobs_dir)
        app.state.catalogue, app.state.keys, app.state.jobs = cat, keys, jobs
        app.state.limiter = limiter
        worker = None
        if settings.run_audit_worker:
            worker = JobWorker(jobs, lambda path, name, job: capped(_audit_check, cat, path, name, job))
            worker.start()
        app.state.refitter = LawRefitter(
            cat, lambda c, progress: capped(fit_catalogue_law, c, progress=progress),
            law_needs_fit if settings.auto_law else lambda c: False)
        yield
        await run_in_threadpool(app.state.refitter.stop)
        if worker is not None:
            await run_in_threadpool(worker.stop)
        cat.close()

    app = FastAPI(
        title="melodyguard",
        version=__version__,
        lifespan=lifespan,
        description="Find copied melodies. Authenticate with an API key in `X-API-Key` "
                    "(or `Authorization: Bearer <key>`); keys are made with `melodyguard keys create`.",
    )
    app.add_middleware(BodyLimitMiddleware, limits={"/v1/audits": settings.max_audit_bytes},
                       default=settings.max_upload_bytes + 64 * 1024,
                       upload_paths=("/v1/works", "/v1/checks", "/v1/audits"))
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(MelodyGuardError)
    async def _mg_error(request: Request, exc: MelodyGuardError) -> JSONResponse:
        status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    async def read_upload(file: UploadFile, limit: int, *, sniff: bool = True) -> bytes:
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, detail=f"{_name(file)} is over the {limit}-byte upload limit")
        if not data:
            raise HTTPException(422, detail=f"{_name(file)} is empty (0 bytes)")
        if sniff and sniff_format(data) is None:
            raise HTTPException(415, detail=f"{_name(file)}: unrecognised format (first bytes {data[:8]!r}); send "
                                            "a Standard MIDI File or audio (WAV, FLAC, MP3, OGG)")
        return data

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not the client's fault; still JSON, and logged by uvicorn with its traceback.
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); please report it"}, status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # name every method of the path, not just the first route's
            methods: set[str] = set()
            for r in request.app.router.routes:
                if isinstance(r, APIRoute) and r.path_regex.match(request.url.path):
                    methods |= r.methods or set()
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    # ------------------------------------------------------------------ operations
    @app.get("/", include_in_schema=False)
    async def home() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def _law_now(app: FastAPI) -> dict[str, Any]:
        """The law in force, and the background refit under way if there is one."""
        out = law_summary(catalogue_law(app.state.catalogue))
        refit = app.state.refitter.status()
        if refit is None:  # a fit in another worker or an `add`: its progress as of its last renewal
            other = law_fit_under_way(app.state.catalogue)
            refit = None if other is None else {"done": other["done"], "total": other["total"]}
        return out if refit is None else {**out, "refitting": refit}

    @app.get("/readyz", summary="Readiness: model and index loaded, with their versions",
             responses={503: {"model": ErrorBody, "description": "not loaded yet"}})
    async def readyz(request: Request) -> dict[str, Any]:
        cat = getattr(request.app.state, "catalogue", None)
        if cat is None:
            raise HTTPException(503, detail="model and index are not loaded yet")
        idx, _ = await run_in_threadpool(cat.index)
        law = await run_in_threadpool(_law_now, request.app)
        man = cat.encoder.manifest
        return {"status": "ready", "version": __version__,
                "model": {"fingerprint": cat.encoder.fingerprint, "preset": man.get("preset"),
                          "format_version": man.get("format_version"), "latent_dim": man.get("latent_dim"),
                          "fingerprint_dim": cat.encoder.dim,
                          "sha256": man.get("sha256")},
                "encoder": cat.encoder.fingerprint, "index": idx.manifest.to_dict(), "works": cat.count(),
                "law": law}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}}})
    def get_metrics(request: Request) -> PlainTextResponse:  # sync: SQLite and the index, off the loop
        state = request.app.state
        gauges = {
            "melodyguard_catalogue_works": ("Works in the catalogue.", float(state.catalogue.count())),
            "melodyguard_catalogue_vectors": ("Vectors in the index.", float(state.catalogue.index()[0].ntotal)),
            "melodyguard_audit_jobs_pending": ("Audit jobs queued or running.", float(state.jobs.pending_jobs())),
        }
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/me", summary="Who this key is", responses=_errors(*_AUTH_ERRORS))
    def me(who: Anyone) -> dict[str, Any]:
        return who.to_dict()

    # ------------------------------------------------------------------ works
    @app.post("/v1/works", status_code=201, summary="Register a work (MIDI or audio)",
              responses=_errors(*_AUTH_ERRORS, *_UPLOAD_ERRORS, 409))
    async def add_work(
        request: Request,
        who: Writer,
        file: Annotated[UploadFile, File(description="MIDI or audio file")],
        title: Annotated[str | None, Form(max_length=500)] = None,
        external_id: Annotated[str | None, Form(max_length=200)] = None,
        metadata: Annotated[str | None, Form(max_length=20_000, description="a JSON object")] = None,
        private: Annotated[bool, Form(description="matched, but title and owner hidden from others")] = False,
        owner: Annotated[str | None, Form(max_length=200, description="admin keys only: the owner")] = None,
    ) -> dict[str, Any]:
        if who.role == "owner":
            if owner not in (None, "", who.owner):
                raise HTTPException(403, detail="an owner key registers works for its own owner only")
            owner = who.owner
        meta: dict[str, Any] = {}
        if metadata:
            try:
                meta = json.loads(metadata)
            except ValueError as exc:
                raise HTTPException(422, detail=f"metadata must be a JSON object: {exc}") from None
            if not isinstance(meta, dict):
                raise HTTPException(422, detail="metadata must be a JSON object, e.g. {\"isrc\": \"...\"}")
        data = await read_upload(file, settings.max_upload_bytes)
        cat = request.app.state.catalogue
        work = await run_in_threadpool(
            capped, cat.add, data, title=title if title is not None else _stem(file), owner=owner or "",
            external_id=external_id or None, metadata=meta, private=private, filename=_name(file),
        )
        await run_in_threadpool(request.app.state.refitter.poke)
        out: dict[str, Any] = work.to_dict()
        return out

    @app.get("/v1/works", summary="List works (owners: their own)", responses=_errors(*_AUTH_ERRORS))
    def list_works(
        request: Request,
        who: Writer,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        owner: Annotated[str | None, Query(max_length=200, description="admin keys only: filter by owner")] = None,
    ) -> dict[str, Any]:
        cat = request.app.state.catalogue
        scope = who.owner if who.role == "owner" else owner
        works = cat.works(owner=scope, limit=limit, offset=offset)
        return {"total": cat.count(owner=scope), "limit": limit, "offset": offset,
                "works": [w.to_dict() for w in works]}

    def _own_work(request: Request, who: Principal, work_id: int) -> Any:
        try:
            work = request.app.state.catalogue.get(work_id)
        except WorkNotFoundError:
            raise HTTPException(404, detail=f"no work with id {work_id}") from None
        if not who.is_admin and work.owner != who.owner:
            raise HTTPException(404, detail=f"no work with id {work_id} among your works")
        return work

    @app.get("/v1/works/{work_id}", summary="One work", responses=_errors(*_AUTH_ERRORS, 404))
    def get_work(request: Request, who: Writer, work_id: WorkId) -> dict[str, Any]:
        out: dict[str, Any] = _own_work(request, who, work_id).to_dict()
        return out

    @app.delete("/v1/works/{work_id}", summary="Delete a work", responses=_errors(*_AUTH_ERRORS, 404))
    def delete_work(request: Request, who: Writer, work_id: WorkId) -> dict[str, Any]:
        _own_work(request, who, work_id)
        work = request.app.state.catalogue.remove(work_id)
        request.app.state.refitter.poke()
        return {"deleted": work.to_dict()}

    # ------------------------------------------------------------------ the catalogue's chance law
    @app.get("/v1/catalogue/law", summary="The chance law the catalogue's E-values are under",
             responses=_errors(*_AUTH_ERRORS))
    def get_law(request: Request, who: Anyone) -> dict[str, Any]:
        return _law_now(request.app)

    @app.post("/v1/catalogue/law", summary="Fit the catalogue's own chance law on its works played backwards "
              "(admin; two checks per decoy, about 40-120 s)", responses=_errors(*_AUTH_ERRORS, 409, 422))
    def post_law(
        request: Request,
        who: Admin,
        decoys: Annotated[int, Query(ge=MIN_DECOY_WORKS, le=5000, description="works played backwards")] = 600,
        target: Annotated[float, Query(gt=0, lt=0.5, description="share of decoys review may flag")] = 0.005,
        seed: Annotated[int, Query(ge=0, le=2**31)] = 0,
    ) -> dict[str, Any]:
        refit = _law_now(request.app).get("refitting")
        if refit is not None:
            raise HTTPException(409, detail=f"the law is being refitted ({refit['done']} of "
                                            f"{refit['total']} decoys checked); try again when GET /v1/catalogue/law "
                                            "no longer shows 'refitting'")
        law = capped(fit_catalogue_law, request.app.state.catalogue, decoys=decoys, target=target, seed=seed)
        return {**law.public(), **{k: law.info[k] for k in ("flagged_before", "flagged_after", "factor_empirical",
                                                           "factor_tail_fit", "tail_slope")}}

    @app.delete("/v1/catalogue/law", summary="Forget the catalogue's own law (admin): the shipped one is used",
                responses=_errors(*_AUTH_ERRORS))
    def delete_law(request: Request, who: Admin) -> dict[str, Any]:
        return {"cleared": clear_catalogue_law(request.app.state.catalogue)}

    # ------------------------------------------------------------------ checks
    @app.post("/v1/checks", summary="Check a file against the catalogue",
              responses={**_errors(*_AUTH_ERRORS, *_UPLOAD_ERRORS, 409),
                         200: {"model": Report, "content": {"application/json": {}, "text/html": {}},
                               "description": "the JSON report (schema melodyguard.report/1), or HTML"}})
    async def post_check(
        request: Request,
        who: Anyone,
        file: Annotated[UploadFile, File(description="MIDI or audio file")],
        format: Annotated[Literal["json", "html"], Query(description="json (default) or html")] = "json",
        tracks: Annotated[Literal["melody", "all"], Query(
            description="MIDI: every pitched line (default; E-values corrected for the lines checked), "
                        "or the melody line only (about 3x faster)",
        )] = "all",
    ) -> Response:
        data = await read_upload(file, settings.max_upload_bytes)
        cat = request.app.state.catalogue
        rep, html = await run_in_threadpool(capped, _check, cat, data, _name(file), who, format == "html", tracks)
        if html is not None:
            return HTMLResponse(html, headers={"X-Melodyguard-Verdict": rep["verdict"]})
        return JSONResponse(rep)

    # ------------------------------------------------------------------ audits
    @app.post("/v1/audits", status_code=202, summary="Queue an audit of several files or one zip",
              responses=_errors(*_AUTH_ERRORS, *_UPLOAD_ERRORS, 409))
    async def post_audit(
        request: Request,
        who: Anyone,
        files: Annotated[list[UploadFile], File(description="MIDI/audio files, or one .zip of them")],
        tracks: Annotated[Literal["melody", "all"], Query(
            description="MIDI: every pitched line (default), or the melody line only (as for a check)",
        )] = "all",
    ) -> JSONResponse:
        if len(files) > settings.max_audit_files:
            raise HTTPException(422, detail=f"{len(files)} files; an audit takes at most {settings.max_audit_files}")
        items: list[tuple[str, bytes]] = []
        for f in files:
            data = await read_upload(f, settings.max_audit_bytes, sniff=False)
            if data[:4] == b"PK\x03\x04":
                members = await run_in_threadpool(
                    read_zip, io.BytesIO(data), max_files=settings.max_audit_files - len(items),
                    max_total_bytes=settings.max_zip_uncompressed_bytes, max_file_bytes=settings.max_upload_bytes)
                items += [(m.name, m.data) for m in members]
            else:
                if len(data) > settings.max_upload_bytes:
                    raise HTTPException(413, detail=f"{_name(f)} is over the {settings.max_upload_bytes}-byte limit")
                items.append((_name(f), data))
        if len(items) > settings.max_audit_files:
            raise HTTPException(422, detail=f"{len(items)} files; an audit takes at most {settings.max_audit_files}")
        await run_in_threadpool(require_works, request.app.state.catalogue)  # 409 rather than a job of errors
        status = await run_in_threadpool(request.app.state.jobs.create, items, key_id=who.key_id, role=who.role,
                                         owner=who.owner, tracks=tracks)
        return JSONResponse(status, status_code=202, headers={"Location": f"/v1/audits/{status['id']}"})

    def _own_job(request: Request, who: Principal, job_id: str) -> dict[str, Any]:
        job = request.app.state.jobs.job(job_id)
        if job is None or not (who.is_admin or (who.role == "owner" and job["owner"] == who.owner)
                               or job["key_id"] == who.key_id):
            raise HTTPException(404, detail=f"no audit {job_id} among yours")
        return job

    @app.get("/v1/audits/{job_id}", summary="An audit's progress", responses=_errors(*_AUTH_ERRORS, 404, 422))
    def get_audit(request: Request, who: Anyone, job_id: JobId) -> dict[str, Any]:
        _own_job(request, who, job_id)
        out: dict[str, Any] = request.app.state.jobs.status(job_id)
        return out

    @app.get("/v1/audits/{job_id}/results", summary="An audit's results so far (JSONL or CSV)",
             responses={**_errors(*_AUTH_ERRORS, 404, 422),
                        200: {"content": {"application/x-ndjson": {}, "text/csv": {}}, "description": "one line per file"}})
    def get_audit_results(
        request: Request, who: Anyone, job_id: JobId,
        format: Annotated[Literal["jsonl", "csv"], Query()] = "jsonl",
    ) -> Response:
        _own_job(request, who, job_id)
        reports = request.app.state.jobs.results(job_id)
        if format == "csv":
            return Response(results_csv(reports), media_type="text/csv")
        return Response("".join(json.dumps(r) + "\n" for r in reports), media_type="application/x-ndjson")

    return app


# ---------------------------------------------------------------------- helpers (thread pool)
def _name(file: UploadFile) -> str:
    """The client's file name, as text only (never a path on our side)."""
    name = (file.filename or "upload").replace("\\", "/").split("/")[-1]
    return "".join(c for c in name if c.isprintable())[:200] or "upload"


def _stem(file: UploadFile) -> str:
    name = _name(file)
    return name.rsplit(".", 1)[0] if "." in name else name


def _check(cat: Any, data: bytes, name: str, who: Principal, html: bool,
           tracks: str = "all") -> tuple[dict[str, Any], str | None]:
    from ..detect import check_file_lines
    from ..evidence import piano_roll_svg, render_html

    rep, lines = check_file_lines(data, cat, filename=name, tracks=tracks)
    melody = next(iter(lines.values()))
    # Pictures need each match's own line and the work: before redaction removes private ids.
    refs = [(lines.get((m.get("track") or {}).get("index"), melody), m["work"]["id"]) for m in rep["matches"]]
    rep, visible = redact_report(rep, who, cat)
    if not html:
        return rep, None
    pics = [piano_roll_svg(q, cat.melody(w), m) if ok else None
            for (q, w), m, ok in zip(refs, rep["matches"], visible)]
    return rep, render_html(rep, pics, n_works=rep["catalogue"]["works"])


def _audit_check(cat: Any, path: Any, name: str, job: dict[str, Any]) -> dict[str, Any]:
    from ..detect import check_file

    rep = check_file(path, cat, filename=name, tracks=job.get("tracks") or "melody")
    rep, _ = redact_report(rep, Principal(job["key_id"], job["role"], job["owner"]), cat)
    return rep
