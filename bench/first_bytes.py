"""Two rows of the gateway benchmark that wrk cannot measure.

Streaming: time from sending a `"stream": true` chat request to its first
`data:` event, direct to the backend and through nanny, interleaved on one
keep-alive connection each so both see the same machine at the same moments.

Cold start: a request for a stopped service until its first byte, minus the
backend's own launch-to-ready (nanny's `nanny_time_to_ready_seconds_sum` grows
by exactly that), which leaves what nanny adds: routing, starting, noticing
ready, forwarding.

Prints one line of JSON. Standard library only.
"""

import http.client
import json
import statistics
import sys
import time

direct_port, nanny_port, cold_service, rounds, cold_rounds = (
    int(sys.argv[1]),
    int(sys.argv[2]),
    sys.argv[3],
    int(sys.argv[4]),
    int(sys.argv[5]),
)
STREAM = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}
)
HEADERS = {"Content-Type": "application/json"}


def first_event(connection):
    """Seconds until the first `data:` line, then the stream read to its end
    so the connection can be used again."""
    began = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", STREAM, HEADERS)
    response = connection.getresponse()
    while True:
        line = response.readline()
        if not line:
            raise SystemExit("the stream ended before any event")
        if line.startswith(b"data:"):
            took = time.perf_counter() - began
            break
    response.read()
    return took


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def milliseconds(seconds):
    return round(seconds * 1000, 3)


direct = http.client.HTTPConnection("127.0.0.1", direct_port)
through = http.client.HTTPConnection("127.0.0.1", nanny_port)
for _ in range(20):  # warm both paths (pools, caches) before counting
    first_event(direct)
    first_event(through)
direct_times, nanny_times = [], []
for _ in range(rounds):
    direct_times.append(first_event(direct))
    nanny_times.append(first_event(through))

control = http.client.HTTPConnection("127.0.0.1", nanny_port)


def control_call(method, path):
    control.request(method, path, headers={"X-Nanny-Client": "bench"})
    response = control.getresponse()
    return response.status, response.read()


def time_to_ready_sum():
    _, text = control_call("GET", "/metrics")
    for line in text.decode().splitlines():
        if line.startswith("nanny_time_to_ready_seconds_sum") and f'service="{cold_service}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


COLD = json.dumps({"model": cold_service, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
overheads, firsts = [], []
for _ in range(cold_rounds):
    status, text = control_call("POST", f"/v1/services/{cold_service}/stop?wait=true")
    if status != 200:
        raise SystemExit(f"stop answered {status}: {text!r}")
    before = time_to_ready_sum()
    client = http.client.HTTPConnection("127.0.0.1", nanny_port)
    began = time.perf_counter()
    client.request("POST", "/v1/chat/completions", COLD, HEADERS)
    response = client.getresponse()
    response.read(1)
    first_byte = time.perf_counter() - began
    response.read()
    client.close()
    if response.status != 200:
        raise SystemExit(f"the cold request answered {response.status}")
    backend = time_to_ready_sum() - before
    firsts.append(first_byte)
    overheads.append(first_byte - backend)

print(
    json.dumps(
        {
            "stream_direct_p50": milliseconds(statistics.median(direct_times)),
            "stream_direct_p99": milliseconds(percentile(direct_times, 0.99)),
            "stream_nanny_p50": milliseconds(statistics.median(nanny_times)),
            "stream_nanny_p99": milliseconds(percentile(nanny_times, 0.99)),
            "cold_first_byte_p50": milliseconds(statistics.median(firsts)),
            "cold_overhead_p50": milliseconds(statistics.median(overheads)),
            "cold_overhead_max": milliseconds(max(overheads)),
        }
    )
)
