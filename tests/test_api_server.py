"""A real ``melodyguard serve`` process (2 workers) on 127.0.0.1: the README's acceptance
scenario, cross-worker consistency, a headless-Chromium test of the web page, a bounded load
test and a schemathesis run. The tests share one server and run in file order."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script, make_catalogue_melodies, melody_midi

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "melodyguard", *args], capture_output=True, text=True, check=True)
    return out.stdout


def _request(url: str, *, method: str = "GET", key: str | None = None, body: bytes | None = None,
             ctype: str | None = None) -> tuple[int, bytes]:
    headers = {}
    if key:
        headers["X-API-Key"] = key
    if ctype:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    cat = tmp / "catalogue"
    keys = {
        "admin": _cli("keys", "create", "--role", "admin", "--catalogue", str(cat)).splitlines()[0],
        "acme": _cli("keys", "create", "--role", "owner", "--owner", "acme", "--catalogue", str(cat)).splitlines()[0],
        "beta": _cli("keys", "create", "--role", "owner", "--owner", "beta", "--catalogue", str(cat)).splitlines()[0],
        "screener": _cli("keys", "create", "--role", "screener", "--catalogue", str(cat)).splitlines()[0],
    }
    port = _free_port()
    env = {**os.environ, "MELODYGUARD_RATE_LIMIT_PER_MINUTE": "0"}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "melodyguard", "serve", "--port", str(port), "--workers", "2",
                             "--catalogue", str(cat)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if _request(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start: " + (tmp / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        mels = make_catalogue_melodies(np.random.default_rng(7), 12, 40)
        yield {"url": url, "keys": keys, "mels": mels, "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _upload(server, route: str, key: str, data: bytes, name: str = "q.mid", fields: dict | None = None):
    mp = load_script("load_test")
    body, ctype = mp.multipart("file", name, data)
    if fields:  # prepend plain form fields
        b = ctype.split("boundary=")[1]
        extra = b"".join(f"--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
                         for k, v in fields.items())
        body = extra + body
    return _request(server["url"] + route, method="POST", key=key, body=body, ctype=ctype)


def _midi(m, shift: int = 0) -> bytes:
    return melody_midi(m.pitches + shift, m.onsets_beats, m.durations_beats)


def test_acceptance_scenario_across_workers(server):
    keys, mels = server["keys"], server["mels"]
    ids = []
    for i, m in enumerate(mels[:8]):
        code, body = _upload(server, "/v1/works", keys["acme"], _midi(m), f"song{i}.mid", {"title": f"Acme Song {i}"})
        assert code == 201, body
        ids.append(json.loads(body)["id"])
    # each check may land on either worker: all of them see every work at once
    for shift in (0, 2, -3, 5, 1, -1):
        code, body = _upload(server, "/v1/checks", keys["screener"], _midi(mels[3], shift))
        rep = json.loads(body)
        assert code == 200 and rep["verdict"] in ("block", "review"), rep
        top = rep["matches"][0]
        assert top["work"]["title"] == "Acme Song 3" and top["transposition_semitones"] == shift
        assert top["segments"][0]["query"]["bars"] and top["segments"][0]["reference"]["bars"]
    code, body = _upload(server, "/v1/checks", keys["screener"], _midi(mels[10]))
    assert code == 200 and json.loads(body)["verdict"] == "clear"
    # cross-tenant delete is refused; the owner's own delete works
    assert _request(f"{server['url']}/v1/works/{ids[0]}", method="DELETE", key=keys["beta"])[0] == 404
    assert _request(f"{server['url']}/v1/works/{ids[0]}", method="DELETE", key=keys["screener"])[0] == 403
    assert _request(f"{server['url']}/v1/works/{ids[0]}", key=keys["acme"])[0] == 200
    assert _request(f"{server['url']}/v1/works/{ids[7]}", method="DELETE", key=keys["acme"])[0] == 200
    for _ in range(4):  # gone for both workers
        rep = json.loads(_upload(server, "/v1/checks", keys["screener"], _midi(mels[7]))[1])
        assert all(m["work"]["title"] != "Acme Song 7" for m in rep["matches"])


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian chromium is not installed")
def test_web_page_in_headless_chromium(server):
    from playwright.sync_api import sync_playwright

    q = server["tmp"] / "suspect.mid"
    q.write_bytes(_midi(server["mels"][2], 4))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(server["url"] + "/")
        page.fill("#key", server["keys"]["screener"])
        page.set_input_files("#file", str(q))
        page.click("#go")
        page.wait_for_selector("#verdict", timeout=60_000)
        assert page.inner_text("#verdict") == "BLOCK"
        frame = page.frame_locator("#report")
        assert "Acme Song 2" in frame.locator("body").inner_text()
        assert frame.locator("svg.pianoroll").count() >= 1  # the piano roll
        page.screenshot(path=str(server["tmp"] / "web.png"), full_page=True)
        # a bad key is shown as an error, not a crash
        page.fill("#key", "mg_00000000_" + "x" * 32)
        page.click("#go")
        page.wait_for_selector(".error", timeout=30_000)
        assert "401" in page.inner_text("#status")
        browser.close()


def test_bounded_load_has_no_errors(server):
    lt = load_script("load_test")
    mels = server["mels"]
    payloads = [_midi(m, s) for m in mels for s in (0, 2)]
    res = lt.run_load(server["url"], server["keys"]["screener"], payloads, clients=20, requests=200, max_seconds=240)
    assert res["requests"] == 200 and res["errors"] == 0, res["error_samples"]
    assert res["verdicts"].get("block", 0) >= 100


def test_schemathesis_finds_no_server_errors(server):
    """Property-based requests from /openapi.json, bounded in examples and time (runs last: its
    admin key may delete works)."""
    exe = Path(sys.executable).with_name("schemathesis")
    out = subprocess.run(
        [str(exe), "run", f"{server['url']}/openapi.json", "-H", f"X-API-Key: {server['keys']['admin']}",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance,negative_data_rejection",
         "--max-examples", "10", "--max-time", "45", "--seed", "1", "--generation-database", "none"],
        capture_output=True, text=True, timeout=300, cwd=server["tmp"],
    )
    tail = out.stdout[-3000:]
    assert out.returncode == 0, tail
    assert "Tested:" in out.stdout and " passed" in tail
    assert _request(server["url"] + "/readyz")[0] == 200


def test_early_415_arrives_whole_when_the_body_comes_late(server):
    """A wrong content type is refused before the body is read; the server still reads (and
    drops) the body first, so closing the connection does not reset it under the client."""
    import socket

    port = int(server["url"].rsplit(":", 1)[1])
    body = b"x" * 200_000
    head = (f"POST /v1/audits HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {server['keys']['admin']}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body[:1000])
        time.sleep(0.5)  # the server has answered by now; the rest of the body is still to come
        s.sendall(body[1000:])
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status, _, rest = data.partition(b"\r\n")
    assert b" 415 " in status + b" "
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["detail"].startswith("send the file as multipart/form-data")
