"""Checks on the real MNIST files, skipped unless $MNIST_ROOT/MNIST/raw holds them."""

import pytest
import torch

from conftest import needs_mnist
from lenet_utils import MNIST_MEAN, MNIST_STD, LeNet5, accuracy, set_seed, train, train_val_split

pytestmark = needs_mnist


def test_shapes_and_types(mnist_train, mnist_test):
    for (images, labels), n in ((mnist_train, 60_000), (mnist_test, 10_000)):
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert images.min() == 0 and images.max() == 1


def test_first_test_labels(mnist_test):
    assert mnist_test[1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_label_counts(mnist_train, mnist_test):
    assert torch.bincount(mnist_train[1], minlength=10).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(mnist_test[1], minlength=10).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_normalization_constants_match_training_set(mnist_train):
    images = mnist_train[0]
    assert images.mean().item() == pytest.approx(MNIST_MEAN, abs=1e-4)
    assert images.std().item() == pytest.approx(MNIST_STD, abs=1e-4)


def test_standard_split_sizes(mnist_train):
    tr_x, tr_y, va_x, va_y = train_val_split(*mnist_train)
    assert (len(tr_x), len(tr_y), len(va_x), len(va_y)) == (48_000, 48_000, 12_000, 12_000)


def test_short_training_learns_mnist(mnist_train, mnist_test):
    """80 Adam steps of 250 images: well above chance; > 90% on the first 2,000 test digits."""
    set_seed(0)
    model = LeNet5()
    history = train(model, torch.optim.Adam(model.parameters(), lr=1e-2), mnist_train[0][:20_000],
                    mnist_train[1][:20_000], epochs=1, batch_size=250, progress=False)
    assert history[0]["train_acc"] > 50
    assert accuracy(model, mnist_test[0][:2000], mnist_test[1][:2000]) > 90
