#!/usr/bin/env bash
# The device check for a machine with a GPU: the `-m cuda` tests, then GPU against CPU on the shipped lstm
# (training and scoring tokens/s, next-word and 64-text scoring p50 latency), printed as one table.
#
#   bench/device_check.sh            # from the repository root, in a few minutes
#
# Such a machine may have no package registry: it brings its own CUDA build of PyTorch, so the project
# is installed there without dependencies (`pip install --no-deps`) and runs on that PyTorch. The pure
# dependencies the tests and the server need (safetensors, tqdm, pytest, and for the server tests fastapi
# and friends) must be importable there too; a folder of them (PYTHONPATH-style, e.g. made elsewhere with
# `pip install --target DIR ...` for the same Python) can be named with RNNLM_DEPS=DIR. Tests whose
# imports are missing skip; the corpus is read from RNNLM_TEST_DATA (default ../shared/data) when present.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${RNNLM_TEST_DATA:-../shared/data}
if [ -n "${RNNLM_DEPS:-}" ]; then export PYTHONPATH="$RNNLM_DEPS${PYTHONPATH:+:$PYTHONPATH}"; fi

echo "== environment"
"$PY" - <<'PY'
import importlib.util, sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}, bf16 {torch.cuda.is_bf16_supported()}")
missing = [m for m in ("safetensors", "tqdm", "pytest", "fastapi", "pydantic_settings", "prometheus_client", "httpx")
           if importlib.util.find_spec(m) is None]
print("missing modules: " + (", ".join(missing) if missing else "none"))
PY

echo "== install (no dependencies: this machine's PyTorch is used)"
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -3 \
  || echo "pip install failed: running from the source tree instead"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

status=0
echo "== pytest -m cuda"
if "$PY" -c "import pytest" 2>/dev/null; then
  RNNLM_TEST_DATA="$DATA" "$PY" -m pytest -m cuda -p no:cacheprovider -o addopts="--import-mode=importlib" \
    --noconftest -rs -q tests/models/test_device_cuda.py || status=1
else
  echo "pytest is not installed here: cuda tests not run"; status=1
fi

echo "== GPU vs CPU on the shipped lstm"
"$PY" bench/device_speed.py --checkpoints checkpoints --model lstm --data "$DATA/wikitext-2" || status=1
exit $status
