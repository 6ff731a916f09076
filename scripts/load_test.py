#!/usr/bin/env python
"""A bounded load test of ``POST /v1/checks`` against a running server on loopback.

``--clients`` threads send ``--requests`` checks in all (copies of catalogue works, near
misses and unrelated melodies), then the script prints throughput, latency percentiles and the
error count as JSON. It refuses any host outside 127.0.0.0/8 and stops after ``--max-seconds``.

    python scripts/load_test.py --url http://127.0.0.1:8000 --key mg_... --midi-dir DIR

Without ``--midi-dir`` it makes its own queries from seeded random melodies (all ``clear``
unless the catalogue holds them).
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np


def multipart(field: str, filename: str, data: bytes, ctype: str = "audio/midi") -> tuple[bytes, str]:
    boundary = "melodyguard-load-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _loopback(url: str) -> tuple[str, int]:
    u = urllib.parse.urlparse(url)
    host = u.hostname or ""
    addr = "127.0.0.1" if host == "localhost" else host
    if not ipaddress.ip_address(addr).is_loopback:
        raise SystemExit(f"refusing to load-test {host}: only loopback addresses are allowed")
    return addr, u.port or 80


def run_load(url: str, key: str, payloads: list[bytes], *, clients: int = 20, requests: int = 300,
             max_seconds: float = 300.0) -> dict[str, Any]:
    """Send ``requests`` checks from ``clients`` threads; return latency and error figures."""
    host, port = _loopback(url)
    lock = threading.Lock()
    counter = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    verdicts: dict[str, int] = {}
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = counter["next"]
                if i >= requests:
                    break
                counter["next"] += 1
            body, ctype = multipart("file", f"q{i}.mid", payloads[i % len(payloads)])
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/checks", body=body, headers={"Content-Type": ctype, "X-API-Key": key})
                resp = conn.getresponse()
                data = resp.read()
                dt = time.perf_counter() - t0
                with lock:
                    if resp.status != 200:
                        errors.append(f"{resp.status}: {data[:200]!r}")
                    else:
                        latencies.append(dt)
                        v = json.loads(data)["verdict"]
                        verdicts[v] = verdicts.get(v, 0) + 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {
        "clients": clients, "requests": len(latencies) + len(errors), "ok": len(latencies), "errors": len(errors),
        "error_samples": errors[:5], "wall_seconds": round(wall, 2),
        "checks_per_second": round(len(latencies) / wall, 1) if wall else 0.0,
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1) if lat.size else None,
                       "p95": round(float(np.percentile(lat, 95)), 1) if lat.size else None,
                       "p99": round(float(np.percentile(lat, 99)), 1) if lat.size else None,
                       "max": round(float(lat.max()), 1) if lat.size else None},
        "verdicts": verdicts,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", required=True, help="an API key (screener or admin)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--midi-dir", type=Path, default=None, help="query files (default: generated melodies)")
    a = ap.parse_args(argv)
    if a.midi_dir:
        payloads = [p.read_bytes() for p in sorted(a.midi_dir.glob("*.mid"))]
    else:
        import pretty_midi

        rng = np.random.default_rng(0)
        payloads = []
        for _ in range(20):
            pm = pretty_midi.PrettyMIDI()
            inst = pretty_midi.Instrument(0)
            p, t = 67, 0.0
            for _ in range(48):
                p = int(np.clip(p + rng.choice([-2, -1, 1, 2, 3, -3]), 55, 84))
                d = float(rng.choice([0.25, 0.5, 0.75]))
                inst.notes.append(pretty_midi.Note(90, p, t, t + d * 0.9))
                t += d
            pm.instruments.append(inst)
            import io

            buf = io.BytesIO()
            pm.write(buf)
            payloads.append(buf.getvalue())
    res = run_load(a.url, a.key, payloads, clients=a.clients, requests=a.requests, max_seconds=a.max_seconds)
    print(json.dumps(res, indent=2))
    return 0 if res["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
