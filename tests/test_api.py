"""The HTTP API through TestClient: every endpoint, every role and tenant rule, the limits."""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile

import numpy as np
import pytest
from conftest import make_catalogue_melodies, melody_midi, random_melody, two_line_midi
from fastapi.testclient import TestClient

from melodyguard import Catalogue
from melodyguard.api import Settings, create_app
from melodyguard.api.keys import KeyStore
from melodyguard.schema import validate_report


def _midi(m, shift: int = 0) -> bytes:
    return melody_midi(m.pitches + shift, m.onsets_beats, m.durations_beats)


def _hidden(m) -> bytes:
    """A song whose lead copies nothing, with the tune ``m`` (+2) an octave down in a viola."""
    lead = random_melody(np.random.default_rng(99), 48, low=72, high=88)
    return two_line_midi(lead, (m.pitches + 2, m.onsets_beats, m.durations_beats))


@pytest.fixture
def api_env(tmp_path, shipped_encoder, rng):
    """A catalogue with 6 works of 'acme' and keys for every role."""
    path = tmp_path / "cat"
    cat = Catalogue(path, encoder=shipped_encoder)
    mels = make_catalogue_melodies(rng, 10, 40)
    cat.add_melodies([{"melody": m, "sha256": f"s{i}", "title": f"tune {i}", "owner": "acme",
                       "metadata": {"isrc": f"X{i}"}} for i, m in enumerate(mels[:6])])
    cat.close()
    ks = KeyStore(path / "api.sqlite")
    keys = {"admin": ks.create(role="admin")[0], "acme": ks.create(role="owner", owner="acme")[0],
            "beta": ks.create(role="owner", owner="beta")[0], "screener": ks.create(role="screener")[0]}
    revoked, rec = ks.create(role="screener")
    ks.revoke(rec["key_id"])
    keys["revoked"] = revoked
    ks.close()
    return path, mels, keys


def H(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def _client(path, **kw) -> TestClient:
    return TestClient(create_app(Settings(catalogue=path, **kw)))


def test_auth_is_required_and_checked(api_env):
    path, mels, keys = api_env
    with _client(path) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        for route in ("/v1/works", "/v1/me"):
            r = c.get(route)
            assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
            assert c.get(route, headers=H("mg_00000000_" + "x" * 32)).status_code == 401
            assert c.get(route, headers=H(keys["revoked"])).status_code == 401
        r = c.get("/v1/me", headers={"Authorization": f"Bearer {keys['acme']}"})
        assert r.status_code == 200 and r.json()["role"] == "owner" and r.json()["owner"] == "acme"
        r = c.post("/v1/checks", files={"file": ("q.mid", _midi(mels[1]), "audio/midi")})
        assert r.status_code == 401


def test_works_roles_and_tenants(api_env):
    path, mels, keys = api_env
    with _client(path) as c:
        new = _midi(mels[7])
        r = c.post("/v1/works", headers=H(keys["screener"]), files={"file": ("a.mid", new, "audio/midi")})
        assert r.status_code == 403 and "screener" in r.json()["detail"]
        r = c.post("/v1/works", headers=H(keys["beta"]), files={"file": ("a.mid", new, "audio/midi")},
                   data={"owner": "acme"})
        assert r.status_code == 403
        r = c.post("/v1/works", headers=H(keys["beta"]), files={"file": ("../../etc/a.mid", new, "audio/midi")},
                   data={"title": "Beta Song", "external_id": "B-1", "metadata": '{"isrc": "BETA1"}'})
        assert r.status_code == 201, r.text
        w = r.json()
        assert w["owner"] == "beta" and w["title"] == "Beta Song" and w["metadata"] == {"isrc": "BETA1"}
        assert w["source_name"] == "a.mid"  # the client's path never reaches the filesystem
        r = c.post("/v1/works", headers=H(keys["beta"]), files={"file": ("again.mid", new, "audio/midi")})
        assert r.status_code == 409 and f"work {w['id']}" in r.json()["detail"]
        r = c.post("/v1/works", headers=H(keys["beta"]), files={"file": ("b.mid", _midi(mels[8]), "audio/midi")},
                   data={"metadata": "[1, 2]"})
        assert r.status_code == 422 and "JSON object" in r.json()["detail"]

        # listing: owners see their own works only; screeners do not browse
        assert c.get("/v1/works", headers=H(keys["acme"])).json()["total"] == 6
        lst = c.get("/v1/works", headers=H(keys["beta"])).json()
        assert lst["total"] == 1 and [x["id"] for x in lst["works"]] == [w["id"]]
        assert c.get("/v1/works", headers=H(keys["admin"])).json()["total"] == 7
        page = c.get("/v1/works?limit=2&offset=2", headers=H(keys["admin"])).json()
        assert [x["title"] for x in page["works"]] == ["tune 2", "tune 3"]
        assert c.get("/v1/works", headers=H(keys["screener"])).status_code == 403
        assert c.get("/v1/works?limit=0", headers=H(keys["admin"])).status_code == 422

        acme_id = c.get("/v1/works", headers=H(keys["acme"])).json()["works"][0]["id"]
        assert c.get(f"/v1/works/{acme_id}", headers=H(keys["acme"])).json()["title"] == "tune 0"
        assert c.get(f"/v1/works/{acme_id}", headers=H(keys["beta"])).status_code == 404
        assert c.get("/v1/works/999999", headers=H(keys["admin"])).status_code == 404

        # cross-tenant delete is refused and changes nothing
        r = c.delete(f"/v1/works/{acme_id}", headers=H(keys["beta"]))
        assert r.status_code == 404
        assert c.delete(f"/v1/works/{acme_id}", headers=H(keys["screener"])).status_code == 403
        assert c.get(f"/v1/works/{acme_id}", headers=H(keys["acme"])).status_code == 200
        r = c.delete(f"/v1/works/{acme_id}", headers=H(keys["acme"]))
        assert r.status_code == 200 and r.json()["deleted"]["id"] == acme_id
        assert c.get(f"/v1/works/{acme_id}", headers=H(keys["acme"])).status_code == 404
        # the deleted work is no longer matched; the others still are
        rep = c.post("/v1/checks", headers=H(keys["screener"]), files={"file": ("q.mid", _midi(mels[0]), "audio/midi")}).json()
        assert all(m["work"]["id"] != acme_id for m in rep["matches"])
        rep = c.post("/v1/checks", headers=H(keys["screener"]), files={"file": ("q.mid", _midi(mels[1], 2), "audio/midi")}).json()
        assert rep["verdict"] == "block" and rep["matches"][0]["work"]["title"] == "tune 1"


def test_private_works_are_matched_without_leaking(api_env):
    path, mels, keys = api_env
    with _client(path) as c:
        r = c.post("/v1/works", headers=H(keys["beta"]), files={"file": ("secret.mid", _midi(mels[9]), "audio/midi")},
                   data={"title": "Unreleased Single", "private": "true", "external_id": "SECRET-9"})
        assert r.status_code == 201 and r.json()["private"] is True
        q = {"file": ("q.mid", _midi(mels[9], -3), "audio/midi")}
        for who in ("acme", "screener"):
            r = c.post("/v1/checks", headers=H(keys[who]), files=q)
            rep = r.json()
            assert rep["verdict"] == "block"
            top = rep["matches"][0]
            validate_report(rep)  # redaction keeps the documented schema
            assert top["work"] == {"id": None, "external_id": None, "title": "(private work)", "owner": None, "private": True}
            assert "Unreleased" not in r.text and "SECRET" not in r.text and "beta" not in r.text
            assert top["segments"] and "pairs" not in top["segments"][0]
            html = c.post("/v1/checks?format=html", headers=H(keys[who]), files=q)
            assert html.status_code == 200 and "Unreleased" not in html.text
            first = html.text.split("<div class='match'>")[1]
            assert "(private work)" in first and "<svg" not in first  # no picture of the secret melody
        rep = c.post("/v1/checks", headers=H(keys["beta"]), files=q).json()
        assert rep["matches"][0]["work"]["title"] == "Unreleased Single"
        # another owner's public work shows only public fields (no metadata)
        r = c.post("/v1/checks", headers=H(keys["beta"]), files={"file": ("q.mid", _midi(mels[3]), "audio/midi")})
        top = r.json()["matches"][0]
        assert set(top["work"]) == {"id", "external_id", "title", "owner", "private"} and top["work"]["owner"] == "acme"
        assert "X3" not in r.text


def test_checks_limits_and_bad_input(api_env):
    path, mels, keys = api_env
    with _client(path, max_upload_bytes=50_000) as c:
        h = H(keys["screener"])
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", _midi(mels[2], 1), "audio/midi")})
        assert r.status_code == 200 and r.json()["verdict"] == "block" and r.json()["schema"] == "melodyguard.report/1"
        r = c.post("/v1/checks?format=html", headers=h, files={"file": ("q.mid", _midi(mels[2], 1), "audio/midi")})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["x-melodyguard-verdict"] == "block" and "<svg " in r.text
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", b"garbage bytes", "audio/midi")})
        assert r.status_code == 415 and "unrecognised format" in r.json()["detail"]
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", b"MThd" + b"\0" * 60_000, "audio/midi")})
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", b"MThd" + b"\0" * 30, "audio/midi")})
        assert r.status_code == 422 and "corrupt" in r.json()["detail"]
        short = melody_midi(*random_melody(np.random.default_rng(1), 4))
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", short, "audio/midi")})
        assert r.status_code == 422 and "at least 8" in r.json()["detail"]
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", b"", "audio/midi")})
        assert r.status_code == 422 and "empty" in r.json()["detail"]
        r = c.post("/v1/checks", headers=h, json={"file": "x"})
        assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
        r = c.post("/v1/checks", headers=h, files={"other": ("q.mid", b"MThd", "audio/midi")})
        assert r.status_code == 422 and "file" in json.dumps(r.json()["detail"])
        r = c.post("/v1/checks?format=pdf", headers=h, files={"file": ("q.mid", _midi(mels[2]), "audio/midi")})
        assert r.status_code == 422
        # A tune in the inner voice of a two-line file: found by default, not in the melody line alone.
        song = _hidden(mels[2])
        r = c.post("/v1/checks?format=html", headers=h, files={"file": ("q.mid", song, "audio/midi")})
        assert r.status_code == 200 and r.headers["x-melodyguard-verdict"] == "block" and "<svg " in r.text
        r = c.post("/v1/checks", headers=h, files={"file": ("q.mid", song, "audio/midi")})
        validate_report(r.json())
        assert r.json()["matches"][0]["track"] == {"index": 1, "name": "Viola"}
        assert [t["track"] for t in r.json()["query"]["tracks_checked"]] == [0, 1]
        r = c.post("/v1/checks?tracks=melody", headers=h, files={"file": ("q.mid", song, "audio/midi")})
        assert r.status_code == 200 and r.json()["verdict"] == "clear" and "tracks_checked" not in r.json()["query"]
        r = c.post("/v1/checks?tracks=some", headers=h, files={"file": ("q.mid", _midi(mels[2]), "audio/midi")})
        assert r.status_code == 422

        # a body streamed without Content-Length is cut off at the limit too
        def chunks():
            yield b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.mid\"\r\n\r\n"
            for _ in range(20):
                yield b"\0" * 10_000
            yield b"\r\n--xx--\r\n"
        r = c.post("/v1/checks", headers={**h, "Content-Type": "multipart/form-data; boundary=xx"}, content=chunks())
        assert r.status_code == 413 and "limit" in r.json()["detail"]
        # the catalogue is intact after all of that
        assert c.get("/readyz").json()["works"] == 6


def test_empty_catalogue_is_a_conflict_not_a_clear(tmp_path, shipped_encoder, rng):
    path = tmp_path / "cat"
    Catalogue(path, encoder=shipped_encoder).close()
    ks = KeyStore(path / "api.sqlite")
    admin, screener = ks.create(role="admin")[0], ks.create(role="screener")[0]
    ks.close()
    m = make_catalogue_melodies(rng, 1, 40)[0]
    with _client(path) as c:
        r = c.post("/v1/checks", headers=H(screener), files={"file": ("q.mid", _midi(m, 2), "audio/midi")})
        assert r.status_code == 409 and "no works to compare with" in r.json()["detail"]
        assert str(path) not in r.json()["detail"]  # no server paths in client messages
        r = c.post("/v1/checks", headers=H(screener), files={"file": ("q.mid", b"nope", "audio/midi")})
        assert r.status_code == 415  # the upload itself is still judged first
        r = c.post("/v1/audits", headers=H(screener), files=[("files", ("q.mid", _midi(m), "audio/midi"))])
        assert r.status_code == 409 and "no works" in r.json()["detail"]
        r = c.post("/v1/works", headers=H(admin), files={"file": ("a.mid", _midi(m), "audio/midi")})
        assert r.status_code == 201
        r = c.post("/v1/checks", headers=H(screener), files={"file": ("q.mid", _midi(m, 2), "audio/midi")})
        assert r.status_code == 200 and r.json()["verdict"] == "block"


def test_rate_limit_per_key(api_env):
    path, _mels, keys = api_env
    with _client(path, rate_limit_per_minute=6, rate_limit_burst=3) as c:
        codes = [c.get("/v1/me", headers=H(keys["screener"])).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/me", headers=H(keys["screener"]))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["detail"]
        assert c.get("/v1/me", headers=H(keys["acme"])).status_code == 200  # per key


def _wait_done(c: TestClient, job: str, key: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = c.get(f"/v1/audits/{job}", headers=H(key)).json()
        if st["status"] == "done":
            return st
        time.sleep(0.2)
    raise AssertionError(f"audit {job} did not finish: {st}")


def test_audits_files_zip_and_results(api_env):
    path, mels, keys = api_env
    with _client(path) as c:
        files = [("files", ("one.mid", _midi(mels[0], 5), "audio/midi")),
                 ("files", ("two.mid", _midi(mels[8]), "audio/midi")),
                 ("files", ("bad.mid", b"MThd\0\0\0\6garbage", "audio/midi"))]
        r = c.post("/v1/audits", headers=H(keys["screener"]), files=files)
        assert r.status_code == 202 and r.headers["location"] == f"/v1/audits/{r.json()['id']}"
        job = r.json()["id"]
        st = _wait_done(c, job, keys["screener"])
        assert st["total"] == 3 and st["done"] == 3 and st["verdicts"]["error"] == 1
        lines = c.get(f"/v1/audits/{job}/results", headers=H(keys["screener"])).text.strip().splitlines()
        reps = [json.loads(x) for x in lines]
        assert [x["file"]["name"] for x in reps] == ["one.mid", "two.mid", "bad.mid"]
        assert reps[0]["verdict"] == "block" and reps[0]["matches"][0]["work"]["title"] == "tune 0"
        assert reps[0]["matches"][0]["transposition_semitones"] == 5  # the query is 5 semitones up
        assert reps[2]["verdict"] == "error" and "corrupt" in reps[2]["error"]
        csv = c.get(f"/v1/audits/{job}/results?format=csv", headers=H(keys["screener"])).text.splitlines()
        assert csv[0].startswith("index,file,verdict") and len(csv) == 4 and ",block," in csv[1]
        assert csv[0].endswith(",too_short_to_judge") and all(row.count(",") == 12 for row in csv[1:3])
        # another tenant cannot see it
        assert c.get(f"/v1/audits/{job}", headers=H(keys["acme"])).status_code == 404
        assert c.get(f"/v1/audits/{job}/results", headers=H(keys["beta"])).status_code == 404
        assert c.get(f"/v1/audits/{job}", headers=H(keys["admin"])).status_code == 200
        assert c.get("/v1/audits/not-a-job", headers=H(keys["admin"])).status_code == 422

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("set/a.mid", _midi(mels[4]))
            z.writestr("set/b.mid", _midi(mels[5], -2))
            z.writestr("__MACOSX/._a.mid", b"junk")
        r = c.post("/v1/audits", headers=H(keys["acme"]), files={"files": ("set.zip", buf.getvalue(), "application/zip")})
        assert r.status_code == 202 and r.json()["total"] == 2
        st = _wait_done(c, r.json()["id"], keys["acme"])
        assert st["verdicts"] == {"block": 2}

        r = c.post("/v1/audits", headers=H(keys["screener"]), files=[("files", ("song.mid", _hidden(mels[4]), "audio/midi"))])
        job = r.json()["id"]
        _wait_done(c, job, keys["screener"])
        rep = json.loads(c.get(f"/v1/audits/{job}/results", headers=H(keys["screener"])).text.strip())
        assert rep["verdict"] == "block" and rep["matches"][0]["track"]["name"] == "Viola"
        r = c.post("/v1/audits?tracks=melody", headers=H(keys["screener"]), files=[("files", ("song.mid", _hidden(mels[4]), "audio/midi"))])
        _wait_done(c, r.json()["id"], keys["screener"])
        rep = json.loads(c.get(f"/v1/audits/{r.json()['id']}/results", headers=H(keys["screener"])).text.strip())
        assert rep["verdict"] == "clear"
        assert c.post("/v1/audits?tracks=some", headers=H(keys["screener"]), files=files[:1]).status_code == 422


def test_zip_limits(api_env):
    path, mels, keys = api_env
    with _client(path, max_zip_uncompressed_bytes=200_000, max_audit_files=3) as c:
        bomb = io.BytesIO()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("a.mid", b"MThd" + b"\0" * 5_000_000)
        assert len(bomb.getvalue()) < 20_000
        r = c.post("/v1/audits", headers=H(keys["screener"]), files={"files": ("bomb.zip", bomb.getvalue(), "application/zip")})
        assert r.status_code == 413 and "inflates" in r.json()["detail"]
        many = io.BytesIO()
        with zipfile.ZipFile(many, "w") as z:
            for i in range(5):
                z.writestr(f"{i}.mid", _midi(mels[i]))
        r = c.post("/v1/audits", headers=H(keys["screener"]), files={"files": ("many.zip", many.getvalue(), "application/zip")})
        assert r.status_code == 422 and "limit is 3" in r.json()["detail"]
        r = c.post("/v1/audits", headers=H(keys["screener"]), files={"files": ("x.zip", b"PK\x03\x04broken", "application/zip")})
        assert r.status_code == 422 and "corrupt" in r.json()["detail"]


def test_audit_resumes_after_restart(api_env):
    path, mels, keys = api_env
    files = [("files", (f"{i}.mid", _midi(mels[i], 1), "audio/midi")) for i in range(4)]
    with _client(path, run_audit_worker=False) as c:  # the server stops before doing any work
        job = c.post("/v1/audits", headers=H(keys["screener"]), files=files).json()["id"]
        assert c.get(f"/v1/audits/{job}", headers=H(keys["screener"])).json()["status"] == "queued"
    with _client(path) as c:  # restarted
        st = _wait_done(c, job, keys["screener"])
        assert st["done"] == 4 and st["verdicts"] == {"block": 4}


def test_readyz_and_metrics(api_env):
    path, mels, keys = api_env
    with _client(path) as c:
        ready = c.get("/readyz").json()
        assert ready["works"] == 6 and ready["index"]["kind"] == "flat" and ready["model"]["fingerprint_dim"] == 64
        assert ready["law"] == {"source": "shipped", "factor": 1.0}  # too few works for a law of its own
        for _ in range(2):
            c.post("/v1/checks", headers=H(keys["screener"]), files={"file": ("q.mid", _midi(mels[1]), "audio/midi")})
        c.get("/v1/works/5", headers=H(keys["acme"]))
        text = c.get("/metrics").text
        assert 'melodyguard_http_requests_total{method="POST",route="/v1/checks",status="200"} 2' in text
        assert 'route="/v1/works/{work_id}"' in text
        assert 'melodyguard_http_request_seconds_count{method="POST",route="/v1/checks"} 2' in text
        assert "melodyguard_catalogue_works 6" in text


def test_web_page_and_openapi(api_env):
    path, _mels, _keys = api_env
    with _client(path) as c:
        page = c.get("/")
        assert page.status_code == 200 and "<form" in page.text and "/v1/checks?format=html" in page.text
        spec = c.get("/openapi.json").json()
        paths = spec["paths"]
        for p in ("/v1/works", "/v1/works/{work_id}", "/v1/checks", "/v1/audits", "/v1/audits/{job_id}",
                  "/v1/audits/{job_id}/results", "/healthz", "/readyz", "/metrics"):
            assert p in paths
        assert "401" in paths["/v1/checks"]["post"]["responses"]


def test_job_store_from_before_the_tracks_setting_is_migrated(tmp_path):
    import sqlite3

    from melodyguard.api.jobs import JobStore

    db = tmp_path / "api.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE audit_jobs (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, role TEXT NOT NULL,
            owner TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, total INTEGER NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL, lease_until REAL NOT NULL DEFAULT 0);
        INSERT INTO audit_jobs VALUES ('a' , 'k1', 'screener', '', 'queued', 1, 't', 't', 0);
    """)
    con.commit()
    con.close()
    store = JobStore(db, tmp_path / "jobs")
    assert store.job("a")["tracks"] == "melody"  # old jobs keep the old behaviour
    new = store.create([("x.mid", b"MThd")], key_id="k2", role="screener", owner="", tracks="all")
    assert store.job(new["id"])["tracks"] == "all"


def test_server_limits_native_threads(api_env, monkeypatch):
    """Concurrent checks must not each start a team of threads per core (they spin against each
    other: 20 clients on 2 cores fell from 57 to 4 checks/s); every pool thread that runs a check
    caps its own native calls (OpenMP's thread count is per thread)."""
    import faiss
    import torch
    from pydantic import ValidationError

    import melodyguard.detect as detect
    from melodyguard.config import set_native_threads
    from melodyguard.errors import ConfigError

    path, mels, keys = api_env
    seen: list[tuple[int, int]] = []
    real = detect.check_file_lines

    def spy(*a, **kw):
        seen.append((torch.get_num_threads(), faiss.omp_get_max_threads()))
        return real(*a, **kw)

    monkeypatch.setattr(detect, "check_file_lines", spy)
    for threads in (1, 2):
        seen.clear()
        with _client(path, threads=threads) as c:
            for _ in range(3):
                r = c.post("/v1/checks", headers=H(keys["screener"]),
                           files={"file": ("q.mid", _midi(mels[1]), "audio/midi")})
                assert r.status_code == 200 and r.json()["verdict"] == "block"
        assert seen == [(threads, threads)] * 3
    assert Settings(catalogue=path).threads == 1
    with pytest.raises(ConfigError, match="at least 1"):
        set_native_threads(0)
    with pytest.raises(ValidationError):
        Settings(catalogue=path, threads=0)


def test_catalogue_law_endpoints(api_env, shipped_encoder):
    """GET shows the law in force; only admins fit or forget one; a catalogue under 100 works
    is refused with 409 and left as it was; a fitted law shows in reports."""
    path, mels, keys = api_env
    with _client(path) as c:
        shipped = {"source": "shipped", "factor": 1.0}
        assert c.get("/v1/catalogue/law", headers=H(keys["screener"])).json() == shipped
        assert c.post("/v1/catalogue/law", headers=H(keys["acme"])).status_code == 403
        r = c.post("/v1/catalogue/law", headers=H(keys["admin"]))
        assert r.status_code == 409 and "at least 100 works" in r.json()["detail"]
        assert c.post("/v1/catalogue/law?decoys=5", headers=H(keys["admin"])).status_code == 422
        assert c.get("/readyz").json()["works"] == 6
    cat = Catalogue(path, encoder=shipped_encoder)
    more = make_catalogue_melodies(np.random.default_rng(5), 100, 40)
    cat.add_melodies([{"melody": m, "sha256": f"more{i}", "title": f"more {i}"} for i, m in enumerate(more)])
    cat.close()
    with _client(path) as c:
        r = c.post("/v1/catalogue/law?decoys=100&seed=1", headers=H(keys["admin"]))
        assert r.status_code == 200, r.text
        law = r.json()
        assert law["source"] == "catalogue decoys" and law["decoys"] == 100 and law["fitted_works"] == 106
        assert law["factor"] >= 1.0 and 0.0 <= law["flagged_after"] <= law["flagged_before"]
        assert law["factor"] == pytest.approx(max(law["factor_empirical"], law["factor_tail_fit"] or 1.0), rel=1e-3)
        assert c.get("/v1/catalogue/law", headers=H(keys["acme"])).json()["fitted_at"] == law["fitted_at"]
        rep = c.post("/v1/checks", headers=H(keys["screener"]), files={"file": ("q.mid", _midi(mels[1]), "audio/midi")})
        assert rep.json()["catalogue"]["law"]["source"] == "catalogue decoys"
        assert c.delete("/v1/catalogue/law", headers=H(keys["acme"])).status_code == 403
        assert c.delete("/v1/catalogue/law", headers=H(keys["admin"])).json() == {"cleared": True}
        assert c.get("/v1/catalogue/law", headers=H(keys["admin"])).json() == shipped


def _refit_once(fit, caplog):
    """A refitter whose catalogue needs a fit, poked once and waited for, the server's log captured."""
    from melodyguard.api.jobs import LawRefitter

    r = LawRefitter("cat", fit, lambda c: True)
    with caplog.at_level(logging.INFO, logger="melodyguard.api"):
        assert r.poke() is True
        r._thread.join(5)
    return r


def test_a_law_fit_in_another_process_shows_and_blocks_a_second(api_env, shipped_encoder, caplog):
    """While another process (another worker, an ``add``) holds the catalogue's law-fit lease,
    every worker shows that fit's progress under ``refitting`` and refuses a second fit with 409;
    a background refit that meets it leaves the fit to it without recording an error."""
    from melodyguard.errors import LawFitBusyError

    path, _, keys = api_env
    other = Catalogue(path, encoder=shipped_encoder)
    assert other.claim_lease("law_fit_lease", "worker-2", seconds=60, note={"done": 40, "total": 600}) is None
    try:
        with _client(path) as c:
            law = c.get("/v1/catalogue/law", headers=H(keys["screener"])).json()
            assert law == {"source": "shipped", "factor": 1.0, "refitting": {"done": 40, "total": 600}}
            assert c.get("/readyz").json()["law"]["refitting"] == {"done": 40, "total": 600}
            r = c.post("/v1/catalogue/law", headers=H(keys["admin"]))
            assert r.status_code == 409 and "being refitted (40 of 600 decoys checked)" in r.json()["detail"]
    finally:
        assert other.release_lease("law_fit_lease", "worker-2")
        other.close()

    def busy_fit(cat, *, progress):
        raise LawFitBusyError("another fit of this catalogue's chance law is under way")

    r = _refit_once(busy_fit, caplog)
    assert r.fits == 0 and r.last_error is None and r.status() is None
    assert "refit left to the other fit: another fit of this catalogue" in caplog.text  # the server's log says so


def _wait_refit(c, key, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        law = c.get("/v1/catalogue/law", headers=H(key)).json()
        if "refitting" not in law:
            return law
        assert 0 <= law["refitting"]["done"] <= law["refitting"]["total"] <= 600
        time.sleep(0.2)
    raise AssertionError("the background refit did not finish")


def test_registering_over_http_refits_the_law(api_env, shipped_encoder):
    """The 100th work registered over HTTP starts a background fit of the catalogue's law (as
    ``melodyguard add`` does); the next registration does not refit; admins cannot start a
    second fit while one runs; ``auto_law=False`` keeps the shipped law."""
    path, mels, keys = api_env
    cat = Catalogue(path, encoder=shipped_encoder)
    more = make_catalogue_melodies(np.random.default_rng(6), 95, 40)
    cat.add_melodies([{"melody": m, "sha256": f"more{i}", "title": f"more {i}"} for i, m in enumerate(more[:93])])
    cat.close()  # 99 works
    extra = make_catalogue_melodies(np.random.default_rng(7), 3, 40)
    with _client(path, auto_law=False) as c:
        r = c.post("/v1/works", headers=H(keys["admin"]), files={"file": ("x0.mid", _midi(extra[0]), "audio/midi")})
        assert r.status_code == 201, r.text
        assert c.get("/v1/catalogue/law", headers=H(keys["admin"])).json() == {"source": "shipped", "factor": 1.0}
    with _client(path) as c:
        r = c.post("/v1/works", headers=H(keys["admin"]), files={"file": ("x1.mid", _midi(extra[1]), "audio/midi")})
        assert r.status_code == 201, r.text
        refitter = c.app.state.refitter
        if refitter.running:  # it may already have finished on a fast machine
            r = c.post("/v1/catalogue/law", headers=H(keys["admin"]))
            assert r.status_code in (200, 409)
            if r.status_code == 409:
                assert "being refitted" in r.json()["detail"]
        law = _wait_refit(c, keys["screener"])
        assert refitter.last_error is None and refitter.fits == 1
        assert law["source"] == "catalogue decoys" and law["fitted_works"] == 101 and law["factor"] >= 1.0
        assert c.get("/readyz").json()["law"]["fitted_at"] == law["fitted_at"]
        r = c.post("/v1/works", headers=H(keys["admin"]), files={"file": ("x2.mid", _midi(extra[2]), "audio/midi")})
        assert r.status_code == 201 and not refitter.running and refitter.fits == 1  # 102 < 2 x 101
        assert _wait_refit(c, keys["screener"])["fitted_at"] == law["fitted_at"]


def test_law_refitter_runs_one_fit_and_stops_cleanly(caplog):
    """The refitter starts a fit only when one is needed and none runs, reports its progress,
    records a failed fit for the next change to retry, and abandons a fit when stopped."""
    import threading

    from melodyguard.api.jobs import LawRefitter

    gate, calls = threading.Event(), []

    def slow_fit(cat, *, progress):
        calls.append(cat)
        for i in range(1000):
            progress(i, 1000)
            gate.wait(0.01)

    needs = {"yes": False}
    r = LawRefitter("cat", slow_fit, lambda c: needs["yes"])
    assert r.poke() is False and r.status() is None  # not needed
    needs["yes"] = True
    assert r.poke() is True and r.poke() is False  # one at a time
    t0 = time.monotonic()
    while r.status() is None or r.status()["total"] == 0:
        assert time.monotonic() - t0 < 10
        time.sleep(0.01)
    assert r.status()["total"] == 1000 and calls == ["cat"]
    r.stop(timeout=5)
    assert not r.running and r.status() is None and r.fits == 0 and r.last_error is None
    assert r.poke() is False  # a stopped refitter starts nothing

    def broken_fit(cat, *, progress):
        raise RuntimeError("work 7 was deleted")

    r = _refit_once(broken_fit, caplog)
    assert r.fits == 0 and r.last_error == "RuntimeError: work 7 was deleted"
    warned = [x for x in caplog.records if x.levelno == logging.WARNING]
    assert len(warned) == 1 and "refit failed (RuntimeError: work 7 was deleted)" in warned[0].getMessage()
