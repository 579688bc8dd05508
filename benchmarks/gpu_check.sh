#!/usr/bin/env bash
# Run ON THE GPU MACHINE, from the repo root: the GPU tests (CUDA graphs against eager, no host syncs, DALI mixed
# decode against CPU mode, fp16/channels_last delivery, the val pipeline against torchvision's eval transform),
# results under $OUT (default: ./gpu-out), and the val preprocessing parity on the GPU ($OUT/preprocess_parity_gpu.json).
# Needs .gpu/ from benchmarks/gpu_prepare.sh (carried with the working tree) and, for the DALI tests, DALI in
# /root/dali (../shared/device/README.md); without DALI those tests skip or fail, and the log says which.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
if [ -f /root/dali/dali_install.py ]; then
  python3 /root/dali/dali_install.py && export PYTHONPATH=/tmp/dali-site:${PYTHONPATH:-}
fi
if ! python3 -c "import pytest" 2>/dev/null; then
  python3 -m pip install -q --no-index --find-links .gpu/wheels --target /tmp/gpu-site pytest \
    && export PYTHONPATH=/tmp/gpu-site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, timm, accelerate; print('torch', torch.__version__, torch.version.cuda, '| timm', timm.__version__, '| accelerate', accelerate.__version__); import nvidia.dali as d; print('dali', d.__version__)" \
    > "$OUT/versions.txt" 2>&1
python3 -m pytest -q -rs -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" \
    tests/test_fastpath.py tests/test_syncs.py tests/test_pipeline_fastpath.py tests/test_unix.py \
    tests/test_pipeline.py tests/test_preprocess.py \
    "$@" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
python3 benchmarks/preprocess_parity.py --device gpu --sources .gpu/photos --photos /tmp/parity_photos \
    --json "$OUT/preprocess_parity_gpu.json" --label "GPU mode (mixed decode)" > "$OUT/preprocess_parity_gpu.log" 2>&1
tail -3 "$OUT/preprocess_parity_gpu.log"
