"""The HTTP API: TestClient for the routes, and one real uvicorn process on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import make_catalogue_melodies, melody_midi, random_melody
from fastapi.testclient import TestClient

from melodyguard import Catalogue
from melodyguard.api import Settings, create_app


@pytest.fixture
def api_catalogue(tmp_path, shipped_encoder, rng):
    cat = Catalogue(tmp_path / "cat", encoder=shipped_encoder)
    mels = make_catalogue_melodies(rng, 6, 40)
    cat.add_melodies([{"melody": m, "sha256": f"s{i}", "title": f"tune {i}", "owner": "acme"} for i, m in enumerate(mels)])
    cat.close()
    return tmp_path / "cat", mels


def test_checks_and_errors(api_catalogue):
    path, mels = api_catalogue
    app = create_app(Settings(catalogue=path, max_upload_bytes=50_000))
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["works"] == 6 and ready["index"]["kind"] == "flat"
        m = mels[2]
        r = client.post("/v1/checks", files={"file": ("q.mid", melody_midi(m.pitches + 1, m.onsets_beats, m.durations_beats), "audio/midi")})
        assert r.status_code == 200 and r.json()["verdict"] == "block"
        assert r.json()["matches"][0]["work"]["title"] == "tune 2"
        r = client.post("/v1/checks", files={"file": ("q.mid", b"garbage bytes", "audio/midi")})
        assert r.status_code == 415 and "unrecognised format" in r.json()["detail"]
        r = client.post("/v1/checks", files={"file": ("q.mid", b"MThd" + b"\0" * 60_000, "audio/midi")})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = client.post("/v1/checks", files={"file": ("q.mid", melody_midi(*random_melody(__import__("numpy").random.default_rng(1), 4)), "audio/midi")})
        assert r.status_code == 422 and "at least 8" in r.json()["detail"]
        r = client.post("/v1/checks", files={"file": ("q.mid", b"", "audio/midi")})
        assert r.status_code == 422 and "empty" in r.json()["detail"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_uvicorn_process(api_catalogue, tmp_path):
    path, mels = api_catalogue
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "melodyguard", "serve", "--port", str(port), "--catalogue", str(path)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    assert json.loads(r.read())["works"] == 6
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        m = mels[4]
        body, boundary = _multipart("file", "q.mid", melody_midi(m.pitches, m.onsets_beats, m.durations_beats))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/checks", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            rep = json.loads(r.read())
        assert rep["verdict"] == "block" and rep["matches"][0]["work"]["title"] == "tune 4"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    b = "melodyguard-test-boundary"
    head = (f"--{b}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: audio/midi\r\n\r\n").encode()
    return head + data + f"\r\n--{b}--\r\n".encode(), b
