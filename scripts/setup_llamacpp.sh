#!/usr/bin/env bash
# Adds the llama.cpp backend to .venv (after scripts/setup.sh): llama-cpp-python, built from source, and gguf.
# Idempotent: a stamp with the hash of the requirement file makes a second run a no-op. The build is kept in pip's
# wheel cache, so a fresh .venv on the same machine installs it in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY="$VENV/bin/python"
stamp=$(cat requirements-llamacpp.txt scripts/setup_llamacpp.sh | sha256sum | cut -c1-16)
if [ -f "$VENV/.llamacpp-stamp" ] && [ "$(cat "$VENV/.llamacpp-stamp")" = "$stamp" ]; then
  exit 0
fi
pip() { "$PY" -m pip "$@" 2>&1 | grep -v "^WARNING: Location" || true; return "${PIPESTATUS[0]}"; }

if [ -n "$("$PY" -m pip cache list llama_cpp_python --format=abspath 2>/dev/null | grep 0.3.36)" ]; then
  echo "setup: installing llama-cpp-python from pip's wheel cache"
else
  command -v c++ >/dev/null || { echo "setup: building llama-cpp-python needs a C++ compiler (apt-get install g++)"; exit 1; }
  echo "setup: building llama-cpp-python from source (about 10 minutes on 2 cores; once per machine) ..."
fi
# The multimodal library (mtmd) is not used by this project: skipping it shortens the build by about a quarter.
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" pip install -q --progress-bar off -r requirements-llamacpp.txt
echo "$stamp" > "$VENV/.llamacpp-stamp"
echo "setup: llama.cpp backend ready"
