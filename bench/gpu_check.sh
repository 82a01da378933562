#!/usr/bin/env bash
# The GPU check, one short script for a CUDA machine (the device tool runs it; CI never has a GPU):
#   1. the CUDA-only tests (side-stream prefetcher) and the training tests, on the GPU;
#   2. the writer on many cores: --jobs 1 against all cores, same set;
#   3. the three MNIST trainings of `make train` on the GPU (recipe defaults, bf16 autocast, loader
#      workers), then test-split evaluation: samples/s and the fraction of the loop spent waiting for data;
#   4. the loader bench's training step fed from shards (data-wait fraction, target < 5%);
#   5. photographs: a COCO U-Net (bf16, batch 32, 320x320) fed with CPU decode in the workers against
#      GPU decode (decode_device="cuda": nvjpeg via torchvision, which the interpreter must have), photos/s
#      and data-wait fraction by worker count (bench/gpu_photos.py; coco-tiny must be found: shared/ beside
#      the checkout or $SEGSHARDS_COCO_TINY); then the same with Augment() (on the device with GPU decode).
# Usage: OUT=folder bash bench/gpu_check.sh   (PY=python to choose the interpreter)
# Without a GPU, `python -m bench gpu_feed --photos --device cpu` runs step 5's code reduced, as a check.
set -u -o pipefail
PY=${PY:-python3}
OUT=${OUT:-gpu-out}
WORK=${WORK:-/tmp/segshards-gpu}
WORKERS=${WORKERS:-6}
DEVICE=${DEVICE:-cuda}
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. "--epochs 1 --samples-per-epoch 256" for a smoke run
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1

step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import importlib.util as u; print('torchvision', 'present' if u.find_spec('torchvision') else 'ABSENT: no GPU decode figures')"
$PY -c "import torch, cv2, numpy; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name() if torch.cuda.is_available() else '-', '| cv2', cv2.__version__, '| numpy', numpy.__version__, '| cores', __import__('os').cpu_count())"

step "CUDA and training tests"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_loaders.py tests/test_train.py tests/test_decode_device.py 2>&1 | tail -8

step "writer: mnist-grid 100,000 train, --jobs 1 then all cores"
for jobs in 1 0; do
    rm -rf "$WORK/grid-$jobs"
    start=$(date +%s%N)
    $PY -m segshards build mnist-grid --out "$WORK/grid-$jobs" --train 100000 --jobs $jobs 2>/dev/null || echo "build failed"
    echo "jobs=$jobs: $(( ($(date +%s%N) - start) / 1000000 )) ms"
done
cmp "$WORK/grid-1/manifest.json" "$WORK/grid-0/manifest.json" && echo "manifests identical across --jobs"

step "shards of make shards"
for r in mnist-foreground mnist-circle mnist-grid; do
    $PY -m segshards build $r --out "$WORK/$r" 2>/dev/null | tail -1 || echo "build $r failed"
done

step "training on the GPU (recipe defaults, $WORKERS loader workers)"
for r in mnist-foreground mnist-circle mnist-grid; do
    start=$(date +%s)
    $PY -m segshards train $r --data "$WORK/$r" --out "$WORK/runs/$r" --device $DEVICE --workers $WORKERS \
        --no-progress $TRAIN_ARGS 2>&1 | tail -3
    $PY -m segshards eval "$WORK/runs/$r" --split test --no-progress 2>&1 | tail -2
    echo "$r: $(( $(date +%s) - start )) s train+eval"
    cp "$WORK/runs/$r/metrics.json" "$OUT/$r-metrics.json"
done
cp "$WORK/runs/mnist-grid/curves.png" "$OUT/grid-curves.png" 2>/dev/null

step "a GPU-sized run: mnist-grid, all 250,000 per epoch, batches of 512, wider U-Net"
$PY -m segshards train mnist-grid --data "$WORK/mnist-grid" --out "$WORK/runs/grid-large" --device $DEVICE \
    --workers $WORKERS --batch-size 512 --samples-per-epoch all --epochs 3 --widths 32,64,128 \
    --no-progress $TRAIN_ARGS 2>&1 | tail -2
$PY -m segshards eval "$WORK/runs/grid-large" --split test --no-progress 2>&1 | tail -1
cp "$WORK/runs/grid-large/metrics.json" "$OUT/mnist-grid-large-metrics.json"

step "loader bench: training step fed from shards"
$PY - "$WORK/mnist-grid" <<'EOF'
import json, sys, time
import torch
from bench.loader_bench import training_wait_fraction
folder = sys.argv[1]
classes = json.load(open(f"{folder}/manifest.json"))["mask"]["num_classes"]
if not torch.cuda.is_available():
    sys.exit("no CUDA device: skipped")
for workers in (2, 6):
    wait, rate, steps = training_wait_fraction(folder, workers, classes)
    print(f"{workers} workers: {rate:,.1f} steps/s ({rate * 256:,.0f} samples/s) over {steps} steps, "
          f"waiting for data {wait:.1%} of step time (target < 5%)")
EOF

step "photographs: CPU decode vs GPU decode, COCO U-Net bf16, batch 32 (${PHOTOS:-2500} photos)"
$PY -m bench gpu_feed --photos --images ${PHOTOS:-2500} --workers ${PHOTO_WORKERS:-2,6,12} 2>&1 \
    | grep -v "^=====" | tee "$OUT/gpu-decode.txt"

step "photographs with Augment(): CPU decode vs GPU decode (augment on the device), ${AUG_WORKERS:-6} workers"
$PY -m bench gpu_feed --photos --augment --images ${PHOTOS:-2500} --workers ${AUG_WORKERS:-6} 2>&1 \
    | grep -v "^=====" | tee "$OUT/gpu-decode-augment.txt"

step "summary"
$PY - "$OUT" <<'EOF'
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*-metrics.json")):
    m = json.loads(path.read_text())
    t, test = m["training"], m["splits"].get("test", {})
    keys = ("iou", "accuracy", "circle_iou", "dice_macro", "dice_background")
    print(path.name, {k: t.get(k) for k in ("device", "wall_s", "samples_per_s", "data_wait_fraction")},
          {k: test[k] for k in keys if k in test})
EOF
