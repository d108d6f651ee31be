#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama.cpp sources vendored in the
# llama-cpp-python sdist on PyPI, and writes a tiny random-weight llama GGUF.
# Both are cached outside the clone (the build takes minutes on two cores), so
# only the first run pays. Prints two lines: `server=PATH` and `model=PATH`.
set -euo pipefail

version=0.3.36
sha256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

here="$(cd "$(dirname "$0")" && pwd)"
cache="${NANNY_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nanny-tests}/llama-cpp-${version}"
mkdir -p "$cache"
server="$cache/llama-server"
model="$cache/tiny-llama.gguf"

# Several test processes may ask at once; one builds, the others wait.
exec 9>"$cache/.lock"
flock 9

log() { echo "llama-server.sh: $*" >&2; }

if [[ ! -x "$cache/venv/bin/python" ]]; then
  log "creating a venv with cmake, gguf and numpy"
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install --quiet cmake gguf numpy >&2
fi

if [[ ! -x "$server" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "downloading llama-cpp-python ${version}"
  # pip fetches the sdist from the package index by name (wheels only for the
  # build tools it prepares the metadata with); the digest pins it.
  "$cache/venv/bin/pip" download --quiet --no-binary llama-cpp-python --no-deps \
    --dest "$work" "llama-cpp-python==${version}" >&2
  echo "$sha256  $work/llama_cpp_python-${version}.tar.gz" | sha256sum -c --quiet -
  tar -xzf "$work/llama_cpp_python-${version}.tar.gz" -C "$work"
  src="$work/llama_cpp_python-${version}/vendor/llama.cpp"
  log "building llama-server (a few minutes)"
  "$cache/venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
  "$cache/venv/bin/cmake" --build "$work/build" --target llama-server -j "$(nproc)" >&2
  install -m 0755 "$work/build/bin/llama-server" "$server.tmp"
  mv "$server.tmp" "$server"
fi

if [[ ! -s "$model" ]]; then
  log "writing a tiny random-weight llama GGUF"
  "$cache/venv/bin/python" "$here/tiny_llama_gguf.py" "$model.tmp"
  mv "$model.tmp" "$model"
fi

echo "server=$server"
echo "model=$model"
