#!/usr/bin/env bash
# One GPU check of the training path, on a machine with one CUDA GPU and the pinned recipe:
#   1. `heartlora speed` on ViT-B/16, 224 px, batch 64, bf16: every variant eager and compiled;
#   2. a 10-epoch paper-protocol run (configs/vtab1k/base.yaml: 1000 training images, batch 64,
#      AdamW, cosine schedule) on real images: the mini-VTAB task photo-patches (scikit-image's
#      photographs) at 224 px, uint8 image cache on the GPU, compiled, bf16;
#   3. one JSON summary: the speed ratios and targets, and the run's step and data-wait seconds
#      per epoch. epoch_vs_pure_step: a steady epoch's wall time over its steps timed alone (the
#      speed benchmark's compiled Heart-LoRA step, also half the heads of every layer, times the
#      epoch's steps); target <= 1.15. epoch_vs_step: wall time over the time the loop spent in
#      steps (which, the host queueing ahead, includes waiting for the GPU).
# Usage: bash benchmarks/gpu_check.sh OUTPUT_DIR   (not yet run on a GPU: 5-8 minutes estimated)
# The run trains from random weights (no download); it measures speed, not accuracy.
# The images need scikit-image; on a machine without it, materialize them where it is and pass
# the folder as DATA (photo-patches is 8 MB: python -c "from heartlora.bundled.tasks import
# materialize; materialize('.gpudata', tasks=['photo-patches'])", then carry .gpudata).
# DEVICE, MODEL, IMG, BATCH, STEPS, EPOCHS, NE override the sizes (a CPU smoke test of the script:
# DEVICE=cpu MODEL=vit_tiny_patch16_224 IMG=32 BATCH=8 STEPS=2 EPOCHS=2 NE=1; NE defaults to half
# of ViT-B's 12 heads, as the speed benchmark's Heart-LoRA). PARTS="speed" or PARTS="train" runs
# one part (two shorter calls where one would run past a time limit); the summary takes what is
# there.
set -euo pipefail
out=${1:?usage: gpu_check.sh OUTPUT_DIR}
mkdir -p "$out"
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
dtype=$([ "$device" = cuda ] && echo bf16 || echo fp32)
parts=" ${PARTS:-speed train} "
export PYTHONUNBUFFERED=1

if [[ $parts == *" speed "* ]]; then
    "$python" -m heartlora speed --device "$device" --dtype "$dtype" \
        --model "${MODEL:-vit_base_patch16_224}" --img-size "${IMG:-224}" \
        --batch-size "${BATCH:-64}" --steps "${STEPS:-20}" --warmup 5 --compile \
        --json "$out/speed.json" 2>&1 | tee "$out/speed.log"
fi

if [[ $parts == *" train "* ]]; then
    data=${DATA:-$out/data}
    if [ ! -d "$data/photo-patches" ]; then  # DATA: a folder materialized elsewhere
        "$python" - "$data" <<'EOF'
import sys
from heartlora.bundled.tasks import materialize
materialize(sys.argv[1], tasks=["photo-patches"])
EOF
    fi
    "$python" -m heartlora train --config configs/vtab1k/base.yaml --output-dir "$out/run" \
        --overwrite --set data_root="$data" --set task=photo-patches --set checkpoint=null \
        --set model="${MODEL:-vit_base_patch16_224}" --set img_size="${IMG:-224}" \
        --set batch_size="${BATCH:-64}" --set pretrained=false --set method=heart-lora-layer \
        --set ne="${NE:-6}" --set epochs="${EPOCHS:-10}" --set warmup_epochs=1 \
        --set eval_every=5 --set dtype="$dtype" --set device="$device" \
        --set cache_images=true --set cache_device="$device" --set compile=true \
        --set num_workers=0 2>&1 | tee "$out/train.log"
fi

"$python" - "$out" "${BATCH:-64}" <<'EOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {}
speed = None
if (out / "speed.json").exists():
    speed = json.loads((out / "speed.json").read_text())
    summary.update(
        environment=speed["environment"],
        speed_ratios=speed["ratios"],
        speed_paired_ratios=speed["paired_ratios"],
        speed_targets=speed["targets"],
        train_median_ms={name: row["median_ms"] for name, row in speed["train"].items()},
        inference_median_ms={name: row["median_ms"] for name, row in speed["inference"].items()},
    )
if (out / "run" / "result.json").exists():
    rows = list(csv.DictReader((out / "run" / "metrics.csv").open()))
    result = json.loads((out / "run" / "result.json").read_text())
    epochs = [
        {k: float(row[k]) for k in ("epoch", "seconds", "step_seconds", "data_seconds")}
        for row in rows
    ]
    steady = epochs[1:] or epochs  # the first epoch compiles
    run = {
        "epochs": epochs,
        "epoch_vs_step": sum(e["seconds"] for e in steady)
        / sum(e["step_seconds"] for e in steady),
        "calibration_seconds": result["calibration_seconds"],
        "wall_seconds": result["wall_seconds"],
        "calibration_vs_run": result["calibration_seconds"] / result["wall_seconds"],
    }
    if speed is not None:  # both parts in one call: the same machine, the same minutes
        steps_per_epoch = -(-result["train_images"] // int(sys.argv[2]))
        train = speed["train"]
        pure_step = train.get("compiled_heart_lora", train["heart_lora"])["median_ms"]
        epoch_seconds = sum(e["seconds"] for e in steady) / len(steady)
        run["epoch_vs_pure_step"] = epoch_seconds / (steps_per_epoch * pure_step / 1000)
        run["epoch_vs_pure_step_target"] = 1.15
    summary["run"] = run
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: summary[k] for k in ("speed_targets", "run") if k in summary}, indent=2))
EOF
