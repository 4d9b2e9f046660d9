#!/usr/bin/env bash
# Every check and figure that needs a GPU, in one call (a GPU session has 30 minutes of device time):
# the CUDA-only tests (CUDA-graph capture vs eager, device augmentation on CUDA tensors), then the
# benchmarks (pipeline, iternorm, backbones). Results land in $OUT (the device tool's output folder)
# or checkpoints/gpu_session.
#
#   bash tools/gpu_session.sh
#
# The package runs from the source tree (PYTHONPATH=ssl), so only what the machine lacks must be
# present: wheels put in .whl/ (pure-Python jsonargparse[signatures] and its needs) are installed
# first when that folder exists.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-checkpoints/gpu_session}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=ssl${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/engine tests/data/test_device_augment.py 2>&1 | tee "$out/tests.txt"
python3 tools/benchmark.py pipeline --workers 16 --out "$out/pipeline.md" 2>&1 | tee "$out/pipeline.log"
python3 tools/benchmark.py iternorm --out "$out/iternorm.md" 2>&1 | tee "$out/iternorm.log"
python3 tools/benchmark.py backbones --out "$out/backbones.md" 2>&1 | tee "$out/backbones.log"
