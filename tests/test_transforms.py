"""heartlora's preprocessing, and timm's description of it."""

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

from heartlora.data.transforms import build_transform, timm_data_config


@pytest.mark.parametrize("normalize", [None, ((0.5, 0.4, 0.3), (0.25, 0.2, 0.5))])
def test_timms_transform_from_the_data_config_is_heartloras(normalize):
    """A non-square image: a crop (timm's default) would differ from heartlora's squash."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8))
    config = timm_data_config(28, normalize)
    ours = build_transform(28, normalize=normalize)(image)
    theirs = timm.data.create_transform(**config)(image)
    torch.testing.assert_close(theirs, ours, atol=0, rtol=0)
