"""The digits datamodule and the reproducible view stream."""

import torch
from torch.utils.data import DataLoader

from spectral_ssl.data import Augmentation, DigitsDataModule, MultiView, SeededEpochSampler, TensorImageDataset


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = DigitsDataModule(), DigitsDataModule()
    a.setup(), b.setup()
    (train_images, _), (test_images, test_labels) = a.splits["train"], a.splits["test"]
    assert len(train_images) == 1437 and len(test_images) == 360
    assert torch.equal(test_images, b.splits["test"][0]) and torch.equal(test_labels, b.labels("test"))
    assert train_images.dtype == torch.uint8 and train_images.shape[1:] == (3, 16, 16)
    assert torch.bincount(test_labels).min() >= 35  # every class held out (stratified)
    train_rows = {tuple(x.flatten().tolist()) for x in train_images}
    duplicates = sum(tuple(x.flatten().tolist()) in train_rows for x in test_images)
    assert duplicates < 5  # disjoint up to identical-looking digits in the raw data


def _views(num_workers, epoch):
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    transform = MultiView([Augmentation(size=16).build([0.5] * 3, [0.25] * 3)] * 2)
    dataset = TensorImageDataset(images, torch.zeros(40, dtype=torch.long), transform)
    sampler = SeededEpochSampler(dataset, num_replicas=1, rank=0, seed=3)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=num_workers)
    return torch.cat([torch.cat(views) for views, _ in loader])


def test_view_stream_depends_only_on_seed_and_epoch():
    torch.manual_seed(123)
    first = _views(0, epoch=1)
    torch.manual_seed(456)  # the global RNG does not matter
    assert torch.equal(first, _views(0, epoch=1))
    assert torch.equal(first, _views(2, epoch=1))  # nor the number of workers
    assert not torch.equal(first, _views(0, epoch=2))  # a new epoch, new views


def test_sampler_shards_under_ddp():
    dataset = list(range(10))
    shards = []
    for rank in range(2):
        sampler = SeededEpochSampler(dataset, num_replicas=2, rank=rank, seed=0)
        shards.append([i for i, _ in sampler])
    assert sorted(shards[0] + shards[1]) == list(range(10))
