"""Speed and memory of Heart-LoRA against peft LoRA, full fine-tuning and the frozen-backbone bound.

    python benchmarks/speed.py --model vit_small_patch16_224 --steps 10 --json speed.json

The same as `heartlora speed`; see `heartlora.tools.speed` for what is measured and docs/performance.md
for the figures.
"""

import sys

from heartlora.cli import main

if __name__ == "__main__":
    sys.exit(main(["speed", *sys.argv[1:]]))
