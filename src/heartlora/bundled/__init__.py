"""The bundled default: a small base ViT pretrained on Fashion-MNIST, its pretraining, and the
mini-VTAB tasks built from real images that Python packages ship.

Importing this package registers the base model with timm (`heartlora.bundled.model`).
"""

import heartlora.bundled.model  # noqa: F401  (registers vit_mini_patch4_28 with timm)
