#!/usr/bin/env bash
# Installs what the tests need, checks the import layers, then runs the suite.
# GPU-marked tests run only where a CUDA GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
# The layering contract (pyproject.toml, [tool.importlinter]) before any test.
lint-imports
markers=()
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  markers=(-m "not gpu")
fi
exec "$PY" -m pytest "${markers[@]}" "$@"
