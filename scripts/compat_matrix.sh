#!/usr/bin/env bash
# Runs a checkpoint folder's own code under each transformers version, as a user of that version would, and compares
# the generated tokens with the pinned version (the one in .venv).
#
#   bash scripts/compat_matrix.sh                # every supported version
#   bash scripts/compat_matrix.sh --ci           # oldest 4.x, latest 4.x, 5.0 and the newest 5.x
#   bash scripts/compat_matrix.sh 4.45.2 5.22.2  # these versions
#
# Needs .venv (`make setup`). Works in MEGREZO_COMPAT_DIR (default .venv-compat): a venv per version with torch and
# only what the checkpoint's code imports (pillow, soundfile; numpy, safetensors and tokenizers come with
# transformers), kept for the next run (about 1.5 GB each). The tiny checkpoint is copied out of the project and each
# check runs from another directory without PYTHONPATH, so only the folder's own code serves. Writes the Markdown
# table to $MEGREZO_COMPAT_DIR/matrix.md and exits non-zero unless every row matches the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ALL_VERSIONS="4.44.2 4.45.2 4.49.0 4.51.3 4.53.3 4.55.4 4.57.6 5.0.0 5.19.0 5.25.0"
CI_VERSIONS="4.44.2 4.57.6 5.0.0 5.25.0"
if [ "${1:-}" = "--ci" ]; then
  versions=$CI_VERSIONS
elif [ $# -gt 0 ]; then
  versions="$*"
else
  versions=$ALL_VERSIONS
fi
DIR=$(mkdir -p "${MEGREZO_COMPAT_DIR:-.venv-compat}" && cd "${MEGREZO_COMPAT_DIR:-.venv-compat}" && pwd)
PY=${PYTHON:-python3}
CHECK="$ROOT/scripts/compat_check.py"
start=$(date +%s)

[ -x .venv/bin/python ] || { echo "compat_matrix: run 'make setup' first (needs .venv)" >&2; exit 2; }
pinned=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
rm -rf "$DIR/run" && mkdir -p "$DIR/run"
echo "compat_matrix: tiny checkpoint and reference run"
tiny=$(.venv/bin/python -c "from megrezo.tiny import cached_tiny_checkpoint; print(cached_tiny_checkpoint())")
cp -r "$tiny" "$DIR/run/tiny"
.venv/bin/python "$CHECK" release-layout "$DIR/run/tiny" "$DIR/run/release" tests/fixtures/release

# The reference: the pinned version, in .venv.
(cd "$DIR/run" && env -u PYTHONPATH "$ROOT/.venv/bin/python" "$CHECK" check tiny release "reference.json" </dev/null)

pip() { "$venv/bin/python" -m pip "$@" 2>&1 | grep -v "^WARNING: Location" || true; return "${PIPESTATUS[0]}"; }
results=""
for version in $versions; do
  echo "compat_matrix: transformers $version"
  version_start=$(date +%s)
  # A venv of its own per version: packages that one version pulls in (e.g. `kernels`) change what another imports.
  venv="$DIR/tf-$version"
  if [ ! -f "$venv/.ready" ]; then
    rm -rf "$venv"
    "$PY" -m venv "$venv"
    pip install -q --progress-bar off torch==2.13.0 pillow soundfile "transformers==$version"
    touch "$venv/.ready"
  fi
  (cd "$DIR/run" && env -u PYTHONPATH "$venv/bin/python" "$CHECK" check tiny release "$version.json" </dev/null)
  echo "compat_matrix: transformers $version took $(( $(date +%s) - version_start )) s"
  results="$results $DIR/run/$version.json"
done
status=0
# shellcheck disable=SC2086
.venv/bin/python "$CHECK" compare "$DIR/run/reference.json" $results > "$DIR/matrix.md" || status=$?
echo "Reference: transformers $pinned (.venv). Token cells compare with it."
cat "$DIR/matrix.md"
echo "compat_matrix: $(( $(date +%s) - start )) s"
exit $status
