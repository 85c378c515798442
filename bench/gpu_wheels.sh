#!/usr/bin/env bash
# Wheels that bench/gpu_acceptance.py needs on the lent GPU machine and that its image lacks
# (it has torch, transformers, numpy, pyyaml, safetensors, einops, msgpack, psutil, py-cpuinfo,
# tqdm, packaging, ninja; Python 3.12): pydantic (ctvlp.config) and DeepSpeed (ctvlp.loop).
# Writes them to .whl/ (git-ignored), ~6 MB. On the GPU machine, carry .whl and start with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:platform:.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p .whl
rm -f .whl/*.whl
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0
# DeepSpeed is an sdist on PyPI; its wheel is pure Python.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -la .whl
