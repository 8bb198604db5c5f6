"""How training batches reach the model: the seeded order of an epoch, and the loader or the
in-memory cache (`cache_images`) that serves the images of each batch."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class CachedImages(Dataset):
    """All images of a dataset decoded and transformed once, held as one tensor."""

    def __init__(self, dataset: Dataset) -> None:
        loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=0)
        images, labels = zip(*loader)
        self.images = torch.cat(images)
        self.labels = torch.cat(labels)
        self.num_classes = dataset.num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


def iterate_batches(dataset: Dataset, batches: list[list[int]], num_workers: int):
    """Yield (images, labels) for each list of indices."""
    if isinstance(dataset, CachedImages):
        for indices in batches:
            index = torch.tensor(indices, dtype=torch.long)
            yield dataset.images[index], dataset.labels[index]
        return
    # Its own generator: creating the iterator must not draw from the global RNG, whose state a
    # mid-epoch checkpoint restores.
    generator = torch.Generator().manual_seed(len(batches))
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=num_workers, generator=generator
    )
    yield from loader


def epoch_order(size: int, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation, independent of resume."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]
