"""fleetgate demo app: a tiny service with a health endpoint and Prometheus metrics.

Stand-alone on purpose (standard library only, no fleetgate import): a bundle ships this file
as its ``app.py`` and it must run from the release directory on any Python >= 3.8.

    python3 app.py [--port N] [--host H] [--config demo.toml]

Port: ``--port``, else env ``DEMO_APP_PORT``, else ``APP_PORT``, else 8080.
Endpoints:
    GET /healthz   200 {"status": "ok", "version", "mode"}; 500 in some cases (see modes)
    GET /metrics   Prometheus text: app_requests_total, app_errors_total (counters),
                   app_request_latency_ms (gauge), app_up (gauge),
                   inference_latency_seconds (summary: quantiles 0.5/0.95/0.99, _sum, _count),
                   process_resident_memory_bytes (gauge, where /proc/self/statm exists)

Behaviour comes from ``demo.toml`` (or ``demo.json``) in the working directory::

    mode = "ok"            # ok | crash-at-start | crash-loop | errors | slow
    version = "1.0.0"      # reported by /healthz
    crash_after_s = 2.0    # crash-loop: exits (code 1) this long after starting
    error_rate = 0.3       # errors: fraction of simulated requests failing, and of /healthz
    latency_ms = 300       # slow: reported latency, and /healthz sleeps that long

The app simulates its own traffic (``rps`` requests per second, default 20) so the counters
move; errors are deterministic (``errors = floor(requests * error_rate)``), which keeps tests
reproducible. The latency summary is that of a log-normal request latency (sigma 0.4) whose
mean is the reported latency, the same shape the simulator's virtual devices report.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DEFAULTS = {
    "mode": "ok",
    "version": "0",
    "crash_after_s": 2.0,
    "error_rate": 0.3,
    "latency_ms": 300.0,
    "rps": 20.0,
}
MODES = ("ok", "crash-at-start", "crash-loop", "errors", "slow")
# Quantile -> multiple of the mean latency, for a log-normal latency with sigma 0.4.
LATENCY_QUANTILES = (("0.5", 0.923), ("0.95", 1.779), ("0.99", 2.344))


def _parse_scalar(text: str) -> object:
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        return text[1:end] if end > 0 else text[1:]
    text = text.split("#", 1)[0].strip()
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def load_settings(directory: str, explicit: str | None = None) -> dict[str, object]:
    """Read demo.toml / demo.json (flat ``key = value`` is all the demo needs)."""
    settings: dict[str, object] = dict(DEFAULTS)
    candidates = [explicit] if explicit else ["demo.toml", "demo.json"]
    for name in candidates:
        path = Path(directory) / name  # an absolute name replaces the directory
        if not path.exists():
            continue
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            settings.update(json.loads(raw))
        else:
            for raw_line in raw.splitlines():
                line = raw_line.strip()
                if not line or line.startswith(("#", "[")) or "=" not in line:
                    continue
                key, _, value = line.partition("=")
                settings[key.strip()] = _parse_scalar(value)
        break
    if settings["mode"] not in MODES:
        raise SystemExit(f"demo app: mode {settings['mode']!r} is not one of {', '.join(MODES)}")
    return settings


def _num(settings: dict[str, object], key: str) -> float:
    return float(str(settings[key]))


class Metrics:
    """Simulated traffic counters, advanced by a background thread."""

    def __init__(self, settings: dict[str, object]) -> None:
        self.mode = str(settings["mode"])
        self.error_rate = _num(settings, "error_rate") if self.mode == "errors" else 0.0
        self.latency_ms = _num(settings, "latency_ms") if self.mode == "slow" else 5.0
        self.rps = _num(settings, "rps")
        self.requests = 0
        self.health_calls = 0
        self.lock = threading.Lock()

    @property
    def errors(self) -> int:
        return math.floor(self.requests * self.error_rate)

    def tick(self, n: int) -> None:
        with self.lock:
            self.requests += n

    def health_fails(self) -> bool:
        """Deterministically fail ``error_rate`` of health calls."""
        with self.lock:
            n = self.health_calls
            self.health_calls += 1
        r = self.error_rate
        return math.floor((n + 1) * r) > math.floor(n * r)

    def render(self) -> str:
        with self.lock:
            requests, errors = self.requests, self.errors
        mean_s = self.latency_ms / 1000.0
        summary = "".join(
            f'inference_latency_seconds{{quantile="{q}"}} {mean_s * factor:.6g}\n'
            for q, factor in LATENCY_QUANTILES
        )
        rss = _resident_bytes()
        return (
            "# HELP app_requests_total Requests handled.\n"
            "# TYPE app_requests_total counter\n"
            f"app_requests_total {requests}\n"
            "# HELP app_errors_total Requests that failed.\n"
            "# TYPE app_errors_total counter\n"
            f"app_errors_total {errors}\n"
            "# HELP app_request_latency_ms Recent request latency.\n"
            "# TYPE app_request_latency_ms gauge\n"
            f"app_request_latency_ms {self.latency_ms}\n"
            "# TYPE app_up gauge\n"
            "app_up 1\n"
            "# HELP inference_latency_seconds Request latency.\n"
            "# TYPE inference_latency_seconds summary\n"
            f"{summary}"
            f"inference_latency_seconds_sum {requests * mean_s:.6g}\n"
            f"inference_latency_seconds_count {requests}\n"
            + (
                ""
                if rss is None
                else "# TYPE process_resident_memory_bytes gauge\n"
                f"process_resident_memory_bytes {rss}\n"
            )
        )


def _resident_bytes() -> int | None:
    """The process's resident memory (Linux); ``None`` where /proc is not there."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def make_handler(settings: dict[str, object], metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                if metrics.mode == "slow":
                    time.sleep(metrics.latency_ms / 1000.0)
                ok = not (metrics.mode == "errors" and metrics.health_fails())
                doc = {
                    "status": "ok" if ok else "error",
                    "version": settings["version"],
                    "mode": metrics.mode,
                }
                self._send(200 if ok else 500, json.dumps(doc).encode(), "application/json")
            elif path == "/metrics":
                self._send(200, metrics.render().encode(), "text/plain; version=0.0.4")
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def log_message(self, format: str, *args: object) -> None:
            return  # quiet: the agent keeps the app's output, keep it meaningful

    return Handler


def _traffic(metrics: Metrics) -> None:
    step = 0.1
    carry = 0.0
    while True:
        time.sleep(step)
        carry += metrics.rps * step
        whole = int(carry)
        carry -= whole
        metrics.tick(whole)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fleetgate demo app")
    default_port = os.environ.get("DEMO_APP_PORT") or os.environ.get("APP_PORT") or "8080"
    parser.add_argument("--port", type=int, default=int(default_port))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", default=None, help="demo.toml/demo.json (default: cwd)")
    args = parser.parse_args(argv)
    settings = load_settings(str(Path.cwd()), args.config)
    mode = settings["mode"]
    print(f"demo app {settings['version']} mode={mode} port={args.port}", flush=True)
    if mode == "crash-at-start":
        print("demo app: crash-at-start: failing on purpose", file=sys.stderr, flush=True)
        return 3
    metrics = Metrics(settings)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(settings, metrics))
    server.daemon_threads = True
    threading.Thread(target=_traffic, args=(metrics,), daemon=True, name="traffic").start()
    threading.Thread(target=server.serve_forever, daemon=True, name="http").start()
    print(f"demo app: listening on http://{args.host}:{args.port}", flush=True)
    if mode == "crash-loop":
        time.sleep(_num(settings, "crash_after_s"))
        print("demo app: crash-loop: exiting on purpose", file=sys.stderr, flush=True)
        return 1
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
