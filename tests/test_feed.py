"""The batch feed: the uint8 image cache gives exactly the transform's tensors, loaders serve the
right batches across passes, and the time spent waiting for data is counted."""

import pytest
import torch
from data_fixtures import make_vtab_task
from PIL import Image

from heartlora.data.factory import build_dataset
from heartlora.training.feed import BatchFeed, CachedImages, epoch_order, iterate_batches


def _noisy_task(root):
    task = make_vtab_task(root, train_labels=(0, 1, 2, 0, 1, 2, 0, 1))
    # noisy, not solid, images: the bicubic resize then matters
    for index, path in enumerate(sorted((task / "images" / "train800").iterdir())):
        Image.effect_noise((13, 9), 40 + index).convert("RGB").save(path)
    return task


@pytest.mark.parametrize("normalize", [None, ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
def test_uint8_cache_equals_the_transform_bit_for_bit(tmp_path, normalize):
    _noisy_task(tmp_path)
    dataset = build_dataset("vtab1k", tmp_path, "toy", "train800", 7, normalize=normalize)
    cache = CachedImages(dataset)
    assert cache.images.dtype == torch.uint8 and cache.images.shape == (8, 3, 7, 7)
    images, labels = cache.gather([5, 0, 3])
    for row, index in enumerate([5, 0, 3]):
        expected, label = dataset[index]
        assert torch.equal(images[row], expected)
        assert labels[row].item() == label
    assert dataset.transform is not None  # the dataset is left as it was


@pytest.mark.parametrize("draws_randomly", [False, True])
def test_feed_serves_each_pass_its_own_batches(tmp_path, draws_randomly):
    _noisy_task(tmp_path)
    dataset = build_dataset("vtab1k", tmp_path, "toy", "train800", 7)
    feed = BatchFeed(dataset, num_workers=1, draws_randomly=draws_randomly)
    assert feed.reuse_workers is not draws_randomly
    for epoch in range(2):
        order = epoch_order(len(dataset), seed=3, epoch=epoch, batch_size=3)
        served = list(feed(order, seed=epoch))
        assert [len(labels) for _, labels in served] == [3, 3, 2]
        for indices, (images, labels) in zip(order, served):
            assert labels.tolist() == [dataset.labels[i] for i in indices]
            assert torch.equal(images[0], dataset[indices[0]][0])
    assert feed.wait_seconds > 0
    assert feed.reset_wait() > 0 and feed.wait_seconds == 0.0


def test_cached_and_loaded_batches_agree(tmp_path):
    _noisy_task(tmp_path)
    dataset = build_dataset("vtab1k", tmp_path, "toy", "train800", 7)
    order = [[1, 2], [7, 0, 4]]
    loaded = list(iterate_batches(dataset, order, num_workers=0))
    cached = list(iterate_batches(CachedImages(dataset), order, num_workers=0))
    for (a, la), (b, lb) in zip(loaded, cached):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_augmentation_draws_do_not_depend_on_workers_or_where_a_pass_starts(tmp_path):
    """Each image draws its crop and flip from its own seed: 0 or 2 workers, a whole pass or
    one resumed after its first batch, the same images; another pass seed, other draws; and
    the process's generator is left alone."""
    _noisy_task(tmp_path)
    dataset = build_dataset("vtab1k", tmp_path, "toy", "train800", 7, augment=True)
    order = epoch_order(len(dataset), seed=3, epoch=0, batch_size=3)

    def images(workers: int, batches, seed: int = 5) -> list[torch.Tensor]:
        feed = BatchFeed(dataset, num_workers=workers, draws_randomly=True)
        return [batch for batch, _ in feed(batches, seed=seed)]

    generator_state = torch.get_rng_state()
    whole = images(0, order)
    assert torch.equal(torch.get_rng_state(), generator_state)
    for got in (images(2, order), [*whole[:1], *images(2, order[1:])]):
        assert all(torch.equal(a, b) for a, b in zip(whole, got, strict=True))
    other_pass = images(0, order, seed=6)
    assert not all(torch.equal(a, b) for a, b in zip(whole, other_pass))
