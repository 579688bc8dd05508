#!/usr/bin/env bash
# Run HERE (a machine with package access), from the repo root, before a GPU session: puts what the GPU machine
# lacks into .gpu/ (git-ignored, ~2 MB), to travel with the working tree to the device machine:
#   .gpu/wheels  pytest and its pure-Python dependencies (the GPU machine has torch, timm, accelerate, no pytest)
#   .gpu/photos  scikit-learn's two sample photos, for benchmarks/make_jpeg_folder.py --photos (no scikit-learn there)
# DALI itself travels separately, in chunks: ../shared/device/README.md (dali-prepare).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"  # the one with scikit-learn
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/photos
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation py --implementation cp \
    -d .gpu/wheels pytest
"$PY" - <<'PY'
import shutil
from pathlib import Path
from sklearn.datasets import load_sample_images
for f in load_sample_images().filenames:
    shutil.copy(f, Path(".gpu/photos") / Path(f).name)
PY
du -sh .gpu/wheels .gpu/photos
echo "next: run(..., carry=['.gpu']) with: bash benchmarks/gpu_check.sh  (and see benchmarks/README.md)"
