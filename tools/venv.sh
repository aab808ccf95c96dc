#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv, install fedfms with its exact pins
# and test extras, then run the given command inside it, from the repository root.
#   bash tools/venv.sh pytest                       # the test suite
#   bash tools/venv.sh python tools/demo.py --out demo_out
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${FEDFMS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "[venv.sh] creating virtual environment $venv" >&2
    "$python" -m venv "$venv"
fi
# Reinstall only when the dependency declaration changed since the last successful install.
stamp="$venv/.fedfms-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[venv.sh] installing fedfms and its pinned dependencies (a few minutes the first time)" >&2
    "$venv/bin/python" -m pip install --quiet --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet --quiet --no-cache-dir -e ".[test]"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
if [ "$#" -eq 0 ]; then
    exit 0
fi
exec "$@"
