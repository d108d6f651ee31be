#!/usr/bin/env python3
"""The cluster's three figures, measured in one run on this machine: a real
etcd (Debian's etcd-server) and two nanny nodes on 127.0.0.2 and 127.0.0.3.

- ready -> routed: from a service becoming ready on node B (the time in B's
  own event) to node A listing it ready (A's /v1/nodes, polled every 2 ms);
- kill -9 -> dropped: from `kill -9` of B to A no longer listing it;
- one forward hop: the same chat request straight to B's gateway and through
  A's (which forwards it to B), sequentially; p50 and p99 of each.

Prints a Markdown table. Needs a nanny binary (NANNY_BIN, default
target/release/nanny) and etcd on PATH or in /usr/bin.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANNY = os.environ.get("NANNY_BIN") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "nanny"
)
LEASE_TTL = float(os.environ.get("BENCH_LEASE_TTL", "2"))
HOPS = int(os.environ.get("BENCH_REQUESTS", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "10"))


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def get(base, path):
    host, port = base[len("http://"):].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path)
    answer = connection.getresponse()
    data = answer.read()
    connection.close()
    return json.loads(data)


def post(base, path):
    host, port = base[len("http://"):].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.request("POST", path, headers={"X-Nanny-Client": "bench"})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer.status


def until(check, limit=60.0, every=0.002):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit("bench/cluster.py: a wait ran out")


class Node:
    def __init__(self, work, name, address, etcd, services):
        self.state = os.path.join(work, name)
        os.makedirs(self.state, exist_ok=True)
        self.config = os.path.join(self.state, "nanny.toml")
        first = 30000 + 100 * (ord(name[0]) - ord("a"))
        with open(self.config, "w") as f:
            f.write(
                f'[daemon]\nport_range = [{first}, {first + 99}]\n\n'
                f'[cluster]\nnode = "{name}"\nlease_ttl = "{int(LEASE_TTL)}s"\n\n{services}'
            )
        self.name, self.address, self.etcd = name, address, etcd
        self.start()

    def start(self):
        env = dict(os.environ)
        env.update(
            NANNY_STATE_DIR=self.state,
            NANNY_LISTEN=f"{self.address}:0",
            NANNY_ETCD=self.etcd,
            PATH=os.path.dirname(NANNY) + ":" + env.get("PATH", ""),
        )
        self.process = subprocess.Popen(
            [NANNY, "up", self.config], env=env, stdout=subprocess.PIPE, text=True
        )
        line = self.process.stdout.readline()
        assert line.startswith("nanny: API on "), line
        self.url = line[len("nanny: API on "):].strip()

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()


def nodes_seen(node):
    return {n["node"]: n for n in get(node.url, "/v1/nodes")}


def service_state(node, on, service):
    seen = nodes_seen(node).get(on)
    if not seen:
        return None
    for s in seen["services"]:
        if s["name"] == service:
            return s["state"]
    return None


def ready_at(node, service):
    """When `service` last became ready on `node`, by its own event (Unix ms)."""
    host, port = node.url[len("http://"):].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", "/v1/events?follow=false&last=50")
    text = connection.getresponse().read().decode()
    connection.close()
    # Server-Sent Events: one JSON event per `data:` line.
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    times = [e["at_unix_ms"] for e in events if e["service"] == service and e["to"] == "ready"]
    return max(times) if times else None


def chat(base, model):
    host, port = base[len("http://"):].split(":")
    return host, int(port), json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )


def timed_requests(base, model, count):
    host, port, body = chat(base, model)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    took = []
    for _ in range(count):
        began = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body=body,
                           headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        took.append((time.perf_counter() - began) * 1000)
        assert answer.status == 200, answer.status
    connection.close()
    return took


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main():
    if not os.access(NANNY, os.X_OK):
        raise SystemExit(f"no nanny at {NANNY}: cargo build --release -p nanny, or set NANNY_BIN")
    etcd_bin = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(etcd_bin, os.X_OK):
        raise SystemExit("no etcd: apt-get install etcd-server")
    work = tempfile.mkdtemp()
    port, peer = free_port(), free_port()
    etcd = subprocess.Popen(
        [etcd_bin, "--name=bench", f"--data-dir={work}/etcd",
         f"--listen-client-urls=http://127.0.0.1:{port}",
         f"--advertise-client-urls=http://127.0.0.1:{port}",
         f"--listen-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
         f"--initial-cluster=bench=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    etcd_url = f"http://127.0.0.1:{port}"
    nodes = []
    try:
        until(lambda: b'"health":"true"' in _health(etcd_url), every=0.05)
        b_services = (
            '[services.chat]\nbackend = "mock"\nmodels = ["chat"]\n'
            'settings = { models = ["mock-chat"] }\n\n'
            '[services.flip]\nbackend = "mock"\nautostart = false\nmodels = ["flip"]\n'
        )
        a = Node(work, "a", "127.0.0.2", etcd_url, "")
        b = Node(work, "b", "127.0.0.3", etcd_url, b_services)
        nodes = [a, b]
        until(lambda: service_state(a, "b", "chat") == "ready", every=0.05)

        # ready on B -> routed by A
        ready_lags = []
        for _ in range(ROUNDS):
            assert post(b.url, "/v1/services/flip/stop?wait=true") == 200
            until(lambda: service_state(a, "b", "flip") == "stopped")
            post(b.url, "/v1/services/flip/start?wait=false")
            seen = until(lambda: service_state(a, "b", "flip") == "ready" and time.time())
            became = until(lambda: ready_at(b, "flip"), every=0.01)
            ready_lags.append(seen * 1000 - became)

        # one forward hop
        timed_requests(b.url, "chat", 100)  # warm both paths' connections
        timed_requests(a.url, "chat", 100)
        direct = timed_requests(b.url, "chat", HOPS)
        forwarded = timed_requests(a.url, "chat", HOPS)

        # kill -9 of B -> dropped by A
        drops = []
        for _ in range(max(1, ROUNDS // 3)):
            until(lambda: "b" in nodes_seen(a), every=0.05)
            killed = time.monotonic()
            b.kill()
            until(lambda: "b" not in nodes_seen(a), limit=LEASE_TTL * 10, every=0.01)
            drops.append((time.monotonic() - killed) * 1000)
            b.start()

        print(f"Cluster figures (etcd 3.4, two nodes on loopback, lease_ttl = {LEASE_TTL:g}s):\n")
        print("| figure | result | target |")
        print("|---|---|---|")
        print(f"| ready on B -> listed ready on A, median of {ROUNDS} (worst) | "
              f"{statistics.median(ready_lags):.1f} ms ({max(ready_lags):.1f} ms) | <= 100 ms |")
        print(f"| kill -9 of B -> dropped by A, median of {len(drops)} (worst) | "
              f"{statistics.median(drops):.0f} ms ({max(drops):.0f} ms) | <= {LEASE_TTL * 1000 + 1000:.0f} ms |")
        d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
        f50, f99 = percentile(forwarded, 0.5), percentile(forwarded, 0.99)
        print(f"| chat request straight to B, p50 / p99 ({HOPS}) | {d50:.2f} / {d99:.2f} ms | |")
        print(f"| same through A (one forward hop), p50 / p99 | {f50:.2f} / {f99:.2f} ms | |")
        print(f"| added by the hop, p50 / p99 | +{f50 - d50:.2f} / +{f99 - d99:.2f} ms | p99 <= 1 ms |")
    finally:
        for node in nodes:
            if node.process.poll() is None:
                node.stop()
        etcd.kill()
        etcd.wait()
        shutil.rmtree(work, ignore_errors=True)


def _health(url):
    try:
        host, port = url[len("http://"):].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=1)
        connection.request("GET", "/health")
        return connection.getresponse().read()
    except OSError:
        return b""


if __name__ == "__main__":
    sys.exit(main())
