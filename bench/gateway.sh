#!/usr/bin/env bash
# The gateway side by side, in one run, against the same mock backend: direct,
# through nanny, through nginx (a plain reverse proxy with upstream keep-alive)
# and through LiteLLM's proxy. Prints a Markdown table (requests/s, p50, p99 at
# a fixed concurrency, from wrk) and nanny's ratios.
#
# Needs a release nanny (`cargo build --release -p nanny`, or NANNY_BIN), `wrk`
# and `nginx` (Debian packages), and PyPI for LiteLLM (a venv under the test
# cache; its row is skipped, saying why, when it cannot be had).
set -euo pipefail
cd "$(dirname "$0")/.."

nanny="${NANNY_BIN:-${CARGO_TARGET_DIR:-target}/release/nanny}"
cache="${NANNY_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nanny-tests}"
connections="${BENCH_CONNECTIONS:-16}"
duration="${BENCH_DURATION:-10s}"
for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "bench/gateway.sh needs $tool" >&2; exit 2; }
done
[[ -x "$nanny" ]] || { echo "no release nanny at $nanny: cargo build --release -p nanny" >&2; exit 2; }
# The mock backend is `nanny mock-backend`, found on PATH.
nanny="$(cd "$(dirname "$nanny")" && pwd)/$(basename "$nanny")"
bin="$(mktemp -d)"
ln -s "$nanny" "$bin/nanny"
export PATH="$bin:$PATH"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$bin"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() { # URL: until it answers, at most 60 s
  for _ in $(seq 600); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "nothing answered at $1" >&2
  return 1
}

backend_port="$(free_port)"
cold_port="$(free_port)"
nanny_port="$(free_port)"
nginx_port="$(free_port)"
litellm_port="$(free_port)"

# nanny supervises the backend itself; "direct" goes to its port.
cat > "$work/nanny.toml" <<TOML
[daemon]
listen = "127.0.0.1:$nanny_port"
state_dir = "$work/state"

[services.bench]
backend = "mock"
port = $backend_port
models = ["bench"]
settings = { models = ["bench"] }
# Streams as fast as it can: the stream row measures the path, not the model.
args = ["--tokens-per-second", "100000"]

# Started by its first request, for the cold-start row.
[services.cold]
backend = "mock"
port = $cold_port
autostart = false
models = ["cold"]
settings = { models = ["cold"] }
TOML
"$nanny" up "$work/nanny.toml" > "$work/nanny.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$backend_port/health"

cat > "$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$backend_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
wait_for "http://127.0.0.1:$nginx_port/health"

litellm=""
key="sk-bench-$RANDOM"
venv="$cache/venv-litellm"
if [[ ! -x "$venv/bin/litellm" ]]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install --quiet 'litellm[proxy]' >/dev/null 2>&1 || true
fi
if [[ -x "$venv/bin/litellm" ]]; then
  cat > "$work/litellm.yaml" <<YAML
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://127.0.0.1:$backend_port/v1
      api_key: unused
YAML
  # LiteLLM refuses to start without a master key; every client sends it.
  LITELLM_MASTER_KEY="$key" "$venv/bin/litellm" --config "$work/litellm.yaml" \
    --host 127.0.0.1 --port "$litellm_port" > "$work/litellm.log" 2>&1 &
  pids+=($!)
  if wait_for "http://127.0.0.1:$litellm_port/health/liveliness"; then
    litellm="http://127.0.0.1:$litellm_port"
  else
    tail -5 "$work/litellm.log" >&2
  fi
fi

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model": "bench", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA

# wrk's report → "requests/s p50 p99" (latencies in ms).
measure() {
  local report
  report="$(wrk -t2 -c"$connections" -d"$duration" --latency -s "$work/post.lua" "$1/v1/chat/completions")"
  local rps p50 p99
  rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$report")"
  p50="$(awk '$1 == "50%" {print $2}' <<<"$report")"
  p99="$(awk '$1 == "99%" {print $2}' <<<"$report")"
  echo "$rps $(ms "$p50") $(ms "$p99")"
}
ms() { # wrk's 812.00us / 1.23ms / 2.01s → milliseconds
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'
}

read -r direct_rps direct_p50 direct_p99 <<<"$(measure "http://127.0.0.1:$backend_port")"
read -r nanny_rps nanny_p50 nanny_p99 <<<"$(measure "http://127.0.0.1:$nanny_port")"
read -r nginx_rps nginx_p50 nginx_p99 <<<"$(measure "http://127.0.0.1:$nginx_port")"
if [[ -n "$litellm" ]]; then
  read -r litellm_rps litellm_p50 litellm_p99 <<<"$(measure "$litellm")"
fi

# Time to the first streamed event, and the cold-start overhead.
first="$(python3 bench/first_bytes.py "$backend_port" "$nanny_port" cold "${BENCH_STREAM_ROUNDS:-500}" "${BENCH_COLD_ROUNDS:-10}")"
field() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$first" "$1"; }

echo "wrk -t2 -c$connections -d$duration, POST /v1/chat/completions (4 tokens, not streamed), $(nproc) cores"
echo
printf '| %-22s | %12s | %10s | %10s |\n' "path" "requests/s" "p50 ms" "p99 ms"
printf '|%s|%s|%s|%s|\n' "------------------------" "--------------" "------------" "------------"
printf '| %-22s | %12s | %10s | %10s |\n' "direct to the backend" "$direct_rps" "$direct_p50" "$direct_p99"
printf '| %-22s | %12s | %10s | %10s |\n' "through nanny" "$nanny_rps" "$nanny_p50" "$nanny_p99"
printf '| %-22s | %12s | %10s | %10s |\n' "through nginx" "$nginx_rps" "$nginx_p50" "$nginx_p99"
if [[ -n "$litellm" ]]; then
  printf '| %-22s | %12s | %10s | %10s |\n' "through LiteLLM" "$litellm_rps" "$litellm_p50" "$litellm_p99"
else
  printf '| %-22s | %12s | %10s | %10s |\n' "through LiteLLM" "skipped" "-" "-"
fi
echo
awk -v n="$nanny_rps" -v x="$nginx_rps" -v l="${litellm_rps:-0}" \
    -v dp50="$direct_p50" -v dp99="$direct_p99" -v np50="$nanny_p50" -v np99="$nanny_p99" 'BEGIN {
  printf "nanny/nginx throughput: %.2fx (target >= 0.9)\n", n / x
  if (l > 0) printf "nanny/LiteLLM throughput: %.1fx (target >= 20)\n", n / l
  printf "nanny over direct: p50 +%.3f ms (target <= 0.1), p99 +%.3f ms (target <= 1)\n", np50 - dp50, np99 - dp99
}'
echo
echo "Streaming, time to the first event (p50 / p99 ms, ${BENCH_STREAM_ROUNDS:-500} requests each, interleaved):"
echo "direct $(field stream_direct_p50) / $(field stream_direct_p99); through nanny $(field stream_nanny_p50) / $(field stream_nanny_p99)"
awk -v d="$(field stream_direct_p50)" -v n="$(field stream_nanny_p50)" 'BEGIN {
  printf "nanny over direct, first event: p50 +%.3f ms (target within 1)\n", n - d }'
echo "Cold start (${BENCH_COLD_ROUNDS:-10} requests for a stopped service): first byte p50 $(field cold_first_byte_p50) ms;"
echo "nanny's overhead beyond the backend's own launch-to-ready: p50 $(field cold_overhead_p50) ms, max $(field cold_overhead_max) ms (target <= 20)"
