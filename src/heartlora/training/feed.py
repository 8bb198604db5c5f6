"""How training batches reach the model: the seeded order of an epoch, and the loader or the
in-memory cache (`cache_images`) that serves the images of each batch.

Two paths, both yielding ``(images, labels)`` already on the training device:

* `CachedImages` decodes and resizes every image once and keeps it as **uint8** (a quarter of
  the float bytes), on the CPU or resident on the GPU (``cache_device``); a batch is one gather,
  then the conversion to float (÷ 255) and the normalisation — exactly the float tensors the
  transform would have produced, computed on the device that holds the cache.
* otherwise a `DataLoader` over the index lists of the epoch: pinned memory and non-blocking
  copies on CUDA, and worker processes kept alive across epochs when the transform draws no
  random numbers. With augmentation every image draws from its own seed, made of the pass's
  seed and the image's index (`SeededDraws`): the draws are the same whichever worker loads the
  image, however many workers there are, and wherever a resumed epoch starts.

`BatchFeed.wait_seconds` adds up the time the training loop spent waiting for data, so the
data path's share of an epoch is measured on every device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T


def _split_transform(transform) -> tuple[list, tuple[torch.Tensor, torch.Tensor] | None]:
    """The PIL steps of a `build_transform` pipeline (before ``ToTensor``) and its
    ``(mean, std)`` normalisation, so the cache can store uint8 and normalise per batch."""
    steps = list(getattr(transform, "transforms", [transform] if transform else []))
    pil_steps, normalize = [], None
    for step in steps:
        if isinstance(step, T.ToTensor):
            continue
        if isinstance(step, T.Normalize):
            mean = torch.as_tensor(step.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.as_tensor(step.std, dtype=torch.float32).view(1, -1, 1, 1)
            normalize = (mean, std)
            continue
        pil_steps.append(step)
    return pil_steps, normalize


class CachedImages(Dataset):
    """All images of a dataset decoded and resized once, held as one uint8 tensor.

    Args:
        dataset: a `LabelledImageDataset` whose transform is a `build_transform` pipeline
            without augmentation (random draws cannot be cached).
        device: where the cache lives (``cuda`` keeps it beside the model: a batch is a gather
            on the GPU and never crosses the bus).

    Attributes:
        images: (N, 3, S, S) uint8; labels: (N,) int64; num_classes: as the dataset's.
    """

    def __init__(self, dataset: Dataset, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        pil_steps, normalize = _split_transform(getattr(dataset, "transform", None))
        to_uint8 = T.Compose([*pil_steps, T.PILToTensor()])
        images = [to_uint8(image) for image, _ in _raw_images(dataset)]
        self.images = torch.stack(images).to(device)
        self.labels = torch.as_tensor(dataset.labels, dtype=torch.long).to(device)
        self.num_classes = dataset.num_classes
        self._normalize = (
            None if normalize is None else (normalize[0].to(device), normalize[1].to(device))
        )

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The float images and labels of ``indices``, on the cache's device."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.images.is_cuda:  # a pageable copy would wait for the GPU: pin, then queue it
            index = index.pin_memory().to(self.images.device, non_blocking=True)
        images = self.images.index_select(0, index).float().div_(255)
        if self._normalize is not None:
            mean, std = self._normalize
            images = images.sub_(mean).div_(std)
        return images, self.labels.index_select(0, index)

    def __getitem__(self, index: int):
        images, labels = self.gather([index])
        return images[0], labels[0]


def _raw_images(dataset: Dataset) -> Iterator[tuple[object, int]]:
    """The dataset's PIL images, untransformed."""
    transform = dataset.transform
    dataset.transform = None
    try:
        for index in range(len(dataset)):
            yield dataset[index]
    finally:
        dataset.transform = transform


class SeededDraws(Dataset):
    """A dataset whose items draw their random numbers (augmentation) from torch's generator
    seeded with `seed` and the item's index, leaving the generator of the process as it was.

    Attributes:
        seed: the pass's seed; set it before each pass (before the loader starts its workers).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.seed = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + index) % 2**63)
            return self.dataset[index]


class _EpochBatches:
    """A batch sampler whose index lists are set anew before each pass (one loader, many
    epochs)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchFeed:
    """Serves the batches of a dataset on ``device``; see the module docstring.

    Args:
        dataset: a `CachedImages` or any dataset of ``(image tensor, label)``.
        num_workers: loader worker processes (not used by a cache).
        device: the training device.
        draws_randomly: the dataset's transform draws random numbers (augmentation): each
            image draws from its own seed (`SeededDraws`), and every pass starts its own
            workers. Otherwise the workers live across passes.

    Attributes:
        wait_seconds: time spent waiting for batches since the last `reset_wait`.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
        draws_randomly: bool = False,
    ) -> None:
        self.seeded = SeededDraws(dataset) if draws_randomly else None
        self.dataset = self.seeded if self.seeded is not None else dataset
        self.num_workers = num_workers
        self.device = torch.device(device)
        self.reuse_workers = not draws_randomly and num_workers > 0
        self.wait_seconds = 0.0
        self._sampler = _EpochBatches()
        self._loader: DataLoader | None = None

    def reset_wait(self) -> float:
        """Return `wait_seconds` and start counting again."""
        seconds, self.wait_seconds = self.wait_seconds, 0.0
        return seconds

    def _loader_for(self, batches: list[list[int]], seed: int) -> DataLoader:
        pin = self.device.type == "cuda"
        if self.reuse_workers:
            self._sampler.batches = batches
            if self._loader is None:
                self._loader = DataLoader(
                    self.dataset,
                    batch_sampler=self._sampler,
                    num_workers=self.num_workers,
                    pin_memory=pin,
                    persistent_workers=True,
                    generator=torch.Generator().manual_seed(seed),
                )
            return self._loader
        # Its own generator: creating the iterator must not draw from the global RNG, whose
        # state a mid-epoch checkpoint restores.
        return DataLoader(
            self.dataset,
            batch_sampler=batches,
            num_workers=self.num_workers,
            pin_memory=pin,
            generator=torch.Generator().manual_seed(seed),
        )

    def __call__(
        self, batches: list[list[int]], seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` on the device for each list of indices; ``seed`` seeds
        the loader's workers and the augmentation of this pass (use the epoch)."""
        if self.seeded is not None:
            self.seeded.seed = seed
        if isinstance(self.dataset, CachedImages):
            source = (self.dataset.gather(indices) for indices in batches)
        else:
            source = iter(self._loader_for(batches, seed))
        while True:
            started = time.perf_counter()
            try:
                images, labels = next(source)
            except StopIteration:
                self.wait_seconds += time.perf_counter() - started
                return
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            self.wait_seconds += time.perf_counter() - started
            yield images, labels


def iterate_batches(
    dataset: Dataset,
    batches: list[list[int]],
    num_workers: int,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` on ``device`` for each list of indices (one pass)."""
    yield from BatchFeed(dataset, num_workers, device)(batches, seed=len(batches))


def epoch_order(size: int, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
    """The global batches of one epoch: a seeded permutation, independent of resume."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]
