"""Prometheus metrics in the text exposition format, kept per process (no extra dependency).

``melodyguard_http_requests_total{method,route,status}`` and
``melodyguard_http_request_seconds{method,route}`` (a histogram) are recorded by
:class:`MetricsMiddleware`; gauges (catalogue size, audit jobs) are read at scrape time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

from .limits import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Metrics", "MetricsMiddleware"]

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(**kv: str) -> str:
    body = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in kv.items())
    return "{" + body + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.hist: dict[tuple[str, str], list[float]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            h = self.hist.setdefault((method, route), [0.0] * len(BUCKETS))
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    h[i] += 1
            self.sums[(method, route)] += seconds
            self.counts[(method, route)] += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        lines = ["# HELP melodyguard_http_requests_total HTTP requests by method, route and status.",
                 "# TYPE melodyguard_http_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                lines.append(f"melodyguard_http_requests_total{_labels(method=m, route=r, status=s)} {n}")
            lines += ["# HELP melodyguard_http_request_seconds HTTP request latency.",
                      "# TYPE melodyguard_http_request_seconds histogram"]
            for (m, r), h in sorted(self.hist.items()):
                for b, c in zip(BUCKETS, h):
                    lines.append(f"melodyguard_http_request_seconds_bucket{_labels(method=m, route=r, le=str(b))} {int(c)}")
                lines.append(f"melodyguard_http_request_seconds_bucket{_labels(method=m, route=r, le='+Inf')} {self.counts[(m, r)]}")
                lines.append(f"melodyguard_http_request_seconds_sum{_labels(method=m, route=r)} {self.sums[(m, r)]:.6f}")
                lines.append(f"melodyguard_http_request_seconds_count{_labels(method=m, route=r)} {self.counts[(m, r)]}")
        for name, (help_, value) in gauges.items():
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Times every HTTP request; labels it with the matched route template (not the raw path,
    so ids do not explode the label set)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = self.clock()
        status = 500

        async def record(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", ""), name, status, self.clock() - t0)
