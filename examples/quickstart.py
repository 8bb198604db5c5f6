"""Heart-LoRA on a timm ViT-S/16 in a few lines: inject, warm up, score heads, deactivate, train,
merge.

Run: .venv/bin/python examples/quickstart.py
Random images stand in for your data here; with real weights, pass `pretrained=True`
(online) or `pretrained_cfg_overlay=dict(file="vit_small.safetensors")` to `create_model`.
"""

import timm
import torch
import torch.nn.functional as F

import heartlora as hl

torch.manual_seed(0)
model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=5)
batches = [(torch.rand(2, 3, 224, 224), torch.randint(0, 5, (2,))) for _ in range(3)]

# 1. Per-head LoRA on q and v; the base is frozen, only adapters and the classifier train.
config = hl.HeartLoRAConfig(
    rank=8, scale=1.0, targets=("q", "v"), ne=3, mode="layer", calib_warmup_steps=1
)
hl.inject(model, config)
print("trainable before selection:", hl.trainable_parameters(model))


def make_optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


# 2. The paper's phase for a run of len(batches) steps: calib_warmup_steps of plain LoRA, then
# the heads' responsiveness (the taylor scorer, on training batches) and the deactivation of
# the ne=3 least responsive heads of each layer (Heart-LoRA†); their B blocks go.
calibration = hl.Calibration(model, total_steps=len(batches))
optimizer = make_optimizer()
model.train()
for step, (images, labels) in enumerate(batches):
    if calibration.due(step):
        calibration.calibrate(batches, F.cross_entropy)
        print("trainable after selection: ", hl.trainable_parameters(model))
        optimizer = make_optimizer()  # 3. train the remaining heads: a new optimizer
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    calibration.after_backward()  # the hook of scorers that accumulate over steps
    optimizer.step()
    optimizer.zero_grad()
    print(f"loss {loss.item():.3f}")

# 4. Save the small adapter, then merge it into the qkv weights for zero-cost inference.
hl.save_adapter(model, "runs/quickstart-adapter")
model.eval()
with torch.no_grad():
    before = model(batches[0][0])
    hl.merge(model)  # now a plain timm model
    print("merged max |Δ|:", (model(batches[0][0]) - before).abs().max().item())
