"""Load test of ``skipganomaly serve`` on this machine: N concurrent clients, requests/s, latency,
errors and the service's peak memory.

    python benchmarks/load_test.py --onnx runs/quickstart/exports/best.onnx [--clients 1,8,32]
    python benchmarks/load_test.py --run runs/quickstart

Starts the service in a child process on 127.0.0.1 (a free port; never another address), then for
each client count runs that many client threads, each sending ``POST /v1/score`` with one image
(a PNG at the model's size, drawn from a small fixed set) over a kept-alive connection, until
``--requests`` requests are done or ``--seconds`` have passed, whichever comes first. Every
response must be 200 with one result; anything else counts as an error. A sampler reads the
service's resident memory (``/proc/PID/status``) ten times a second; the table shows the peak
during each level and the high-water mark at the end, so memory that grew with the request count
would show. The service is stopped at the end (and on any failure).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


class Connection(http.client.HTTPConnection):
    """A kept-alive connection that sends each request at once (TCP_NODELAY), as browsers and
    HTTP libraries do; without it Nagle's algorithm and delayed ACKs add about 40 ms per request."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def make_bodies(size: int, channels: int, count: int = 16) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(0)
    bodies = []
    for i in range(count):
        coarse = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8)
        image = Image.fromarray(coarse.squeeze()).resize((size, size), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="img{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + buffer.getvalue()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        bodies.append((body, f"multipart/form-data; boundary={boundary}"))
    return bodies


def run_level(host: str, port: int, clients: int, max_requests: int, seconds: float, bodies) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = 0
    stop_at = time.monotonic() + seconds

    def take() -> bool:
        nonlocal issued
        with lock:
            if issued >= max_requests or time.monotonic() >= stop_at:
                return False
            issued += 1
            return True

    def client(k: int) -> None:
        connection = Connection(host, port, timeout=60)
        n = k
        try:
            while take():
                body, content_type = bodies[n % len(bodies)]
                n += clients
                started = time.perf_counter()
                try:
                    connection.request("POST", "/v1/score", body, {"Content-Type": content_type})
                    response = connection.getresponse()
                    payload = response.read()
                    elapsed = time.perf_counter() - started
                    ok = response.status == 200 and len(json.loads(payload)["results"]) == 1
                    with lock:
                        if ok:
                            latencies.append(elapsed)
                        else:
                            errors.append(f"HTTP {response.status}: {payload[:200]!r}")
                except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    connection.close()
                    connection = Connection(host, port, timeout=60)
        finally:
            connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    done = len(latencies)
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": done + len(errors),
        "ok": done,
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": wall,
        "requests_per_s": done / wall if wall > 0 else float("nan"),
        "p50_ms": 1000 * statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
        if ordered
        else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--onnx", help="an exported model")
    which.add_argument("--run", help="a training run (exported when needed)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per level (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=400, help="requests per level at most (default 400)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most (default 30)")
    parser.add_argument(
        "--threads", type=int, default=0, help="the service's ONNX Runtime threads (default all)"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    levels = [int(v) for v in args.clients.split(",")]

    command = [
        sys.executable,
        "-m",
        "skipganomaly",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "warning",
    ]
    command += ["--onnx", args.onnx] if args.onnx else ["--run", args.run]
    if args.threads:
        command += ["--threads", str(args.threads)]
    service = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 300
        while "serving" not in line:
            line = service.stdout.readline()
            if not line and service.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the service did not start: {line}")
        url = line.split(" on ", 1)[1].split(":", 2)
        host, port = url[1].lstrip("/"), int(url[2].split(":")[0])
        assert host == "127.0.0.1"
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("GET", "/v1/model")
        model = json.loads(connection.getresponse().read())
        connection.close()
        bodies = make_bodies(model["image_size"], model["channels"])
        start_rss = rss_mib(service.pid)
        print(
            f"service pid {service.pid} on {host}:{port}: {model['model']} {model['image_size']} px, "
            f"{model.get('engine')}; RSS at start {start_rss:.0f} MiB; load average "
            f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
        results = []
        for clients in levels:
            peak = [0.0]
            sampling = threading.Event()

            def sample(peak=peak, sampling=sampling) -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], rss_mib(service.pid))
                    time.sleep(0.1)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                result = run_level(host, port, clients, args.requests, args.seconds, bodies)
            finally:
                sampling.set()
                sampler.join()
            result["peak_rss_mib"] = peak[0]
            result["rss_after_mib"] = rss_mib(service.pid)
            results.append(result)
            print(
                f"  {clients:>3} clients: {result['requests']} requests in {result['seconds']:.1f} s, "
                f"{result['requests_per_s']:.1f} req/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                f"errors {result['errors']}, peak RSS {result['peak_rss_mib']:.0f} MiB"
                + (f" ({result['error_examples']})" if result["errors"] else "")
            )
        high_water = rss_mib(service.pid, "VmHWM")
        print(
            f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'peak RSS MiB':>12}"
        )
        for r in results:
            print(
                f"{r['clients']:>7} {r['requests']:>8} {r['requests_per_s']:>7.1f} {r['p50_ms']:>7.1f} "
                f"{r['p99_ms']:>7.1f} {r['errors']:>6} {r['peak_rss_mib']:>12.0f}"
            )
        print(
            f"service RSS: {start_rss:.0f} MiB at start, high-water mark {high_water:.0f} MiB; load average "
            f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "model": model,
                        "start_rss_mib": start_rss,
                        "high_water_mib": high_water,
                        "levels": results,
                    },
                    indent=2,
                    default=str,
                )
            )
        return 1 if any(r["errors"] for r in results) else 0
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()


if __name__ == "__main__":
    sys.exit(main())
