"""The HTTP API: a thin FastAPI layer over the library.

``create_app(settings)`` loads the encoder and opens the catalogue once, in ``lifespan``.
Library errors map to 4xx responses with a ``detail`` that says what to fix; CPU-bound work
runs in a thread pool, off the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import InputTooLargeError, InvalidInputError, MelodyGuardError, UnsupportedFormatError
from .settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ..index import Catalogue
        from ..model.encoder import load_encoder

        enc = load_encoder(settings.weights)
        cat = Catalogue(settings.catalogue, encoder=enc)
        await run_in_threadpool(cat.index)
        app.state.catalogue = cat
        yield
        cat.close()

    app = FastAPI(title="melodyguard", version=__version__, lifespan=lifespan)

    @app.exception_handler(MelodyGuardError)
    async def _mg_error(request: Request, exc: MelodyGuardError) -> JSONResponse:
        status = 400
        if isinstance(exc, InputTooLargeError):
            status = 413
        elif isinstance(exc, UnsupportedFormatError):
            status = 415
        elif isinstance(exc, InvalidInputError):
            status = 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> dict[str, Any]:
        cat = getattr(request.app.state, "catalogue", None)
        if cat is None:
            raise HTTPException(503, detail="model and index are not loaded yet")
        idx, _ = cat.index()
        return {"status": "ready", "encoder": cat.encoder.fingerprint, "model": cat.encoder.manifest.get("preset"),
                "index": idx.manifest.to_dict(), "works": cat.count()}

    @app.post("/v1/checks")
    async def post_check(request: Request, file: UploadFile) -> dict[str, Any]:
        from ..detect import check_file

        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, detail=f"upload is over the {settings.max_upload_bytes}-byte limit")
        if not data:
            raise HTTPException(422, detail="the uploaded file is empty")
        rep = await run_in_threadpool(check_file, data, request.app.state.catalogue, filename="upload")
        return rep

    return app
