"""load_mnist and load_dataset on small hand-written IDX files, train_val_split, minibatch_indices."""

import struct

import numpy as np
import pytest
import torch

from lenet_utils import MNIST_FILES, load_dataset, load_mnist, minibatch_indices, train_val_split

SIZES = {"train": 12, "t10k": 5}


def write_idx(path, array: np.ndarray) -> None:
    """Uncompressed IDX: magic 0x0000080<ndim> (unsigned bytes), big-endian int32 dims, data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root, seed: int = 0, skip: tuple[str, ...] = (), folder: str = "MNIST") -> dict:
    """Write the four IDX files under ``root/<folder>/raw``; return {"train"/"t10k": (images, labels)}."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in SIZES.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # make sure both extremes occur
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        data[split] = (images, labels)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            if name not in skip:
                write_idx(raw / name, array)
    return data


@pytest.fixture
def fake_mnist(tmp_path):
    return tmp_path, write_fake_mnist(tmp_path)


@pytest.mark.parametrize("train, split", [(True, "train"), (False, "t10k")])
def test_load_mnist_reads_idx_files_exactly(fake_mnist, train, split, no_mnist_download):
    root, data = fake_mnist
    images, labels = load_mnist(root, train=train)
    expected_images, expected_labels = data[split]
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape == (SIZES[split], 1, 28, 28) and labels.shape == (SIZES[split],)
    assert images.device.type == "cpu" and labels.device.type == "cpu"
    reference = torch.from_numpy(expected_images).to(torch.float32).unsqueeze(1) / 255
    assert torch.equal(images, reference)
    assert images.min() == 0 and images.max() == 1
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())
    assert no_mnist_download == []  # files present: nothing fetched


def test_load_mnist_accepts_str_root_and_device(fake_mnist):
    root, data = fake_mnist
    images, labels = load_mnist(str(root), train=False, device=torch.device("cpu"))
    assert torch.equal(labels, torch.from_numpy(data["t10k"][1]).long())


def test_load_mnist_uses_mnist_root_env(fake_mnist, monkeypatch):
    root, data = fake_mnist
    monkeypatch.setenv("MNIST_ROOT", str(root))
    _, labels = load_mnist()
    assert torch.equal(labels, torch.from_numpy(data["train"][1]).long())


def test_load_mnist_defaults_to_data_folder(tmp_path, monkeypatch):
    data = write_fake_mnist(tmp_path / "data", seed=5)
    monkeypatch.delenv("MNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    _, labels = load_mnist(train=False)
    assert torch.equal(labels, torch.from_numpy(data["t10k"][1]).long())


@pytest.mark.parametrize("skip", [MNIST_FILES, ("t10k-labels-idx1-ubyte",)], ids=["empty", "one-missing"])
def test_missing_files_raise_file_not_found_without_network(tmp_path, skip, no_mnist_download):
    write_fake_mnist(tmp_path, skip=skip)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert "MNIST_ROOT" in message
    assert no_mnist_download and all(url.startswith(("http://", "https://")) for url in no_mnist_download)


def test_truncated_images_file_raises_value_error(fake_mnist):
    root, _ = fake_mnist
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_mnist(root, train=True)
    load_mnist(root, train=False)  # the other split is still fine


def test_truncated_labels_file_raises_value_error(fake_mnist):
    root, _ = fake_mnist
    path = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError):
        load_mnist(root, train=False)


def test_empty_images_file_raises_value_error(fake_mnist):
    root, _ = fake_mnist
    (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(ValueError):
        load_mnist(root, train=True)


def test_image_and_label_counts_must_match(fake_mnist):
    root, data = fake_mnist
    write_idx(root / "MNIST" / "raw" / "train-labels-idx1-ubyte", data["train"][1][:-1])
    with pytest.raises(ValueError, match="inconsistent"):
        load_mnist(root, train=True)


@pytest.mark.parametrize("bad_label", [10, 255])
def test_labels_out_of_range_raise_value_error(fake_mnist, bad_label):
    root, data = fake_mnist
    labels = data["t10k"][1].copy()
    labels[2] = bad_label
    write_idx(root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match="0..9"):
        load_mnist(root, train=False)


# ----------------------------------------------------------------------------- train_val_split


def numbered(n: int):
    """Images whose single pixel (0, 0, 0) holds the image's index; labels = index % 10."""
    images = torch.zeros(n, 1, 28, 28)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return images, torch.arange(n) % 10


def test_train_val_split_sizes_disjoint_complete():
    images, labels = numbered(100)
    tr_x, tr_y, va_x, va_y = train_val_split(images, labels)
    assert (len(tr_x), len(tr_y), len(va_x), len(va_y)) == (80, 80, 20, 20)
    train_ids, val_ids = tr_x[:, 0, 0, 0].long(), va_x[:, 0, 0, 0].long()
    assert set(train_ids.tolist()).isdisjoint(val_ids.tolist())
    assert sorted(train_ids.tolist() + val_ids.tolist()) == list(range(100))
    assert torch.equal(tr_y, train_ids % 10) and torch.equal(va_y, val_ids % 10)  # pairs kept


@pytest.mark.parametrize("n, fraction", [(100, 0.2), (97, 0.2), (50, 0.5)])
def test_train_val_split_matches_random_split(n, fraction):
    images, labels = numbered(n)
    tr_x, _, va_x, _ = train_val_split(images, labels, val_fraction=fraction, seed=7)
    n_val = round(n * fraction)
    train_sub, val_sub = torch.utils.data.random_split(
        range(n), [n - n_val, n_val], generator=torch.Generator().manual_seed(7))
    assert tr_x[:, 0, 0, 0].long().tolist() == list(train_sub.indices)
    assert va_x[:, 0, 0, 0].long().tolist() == list(val_sub.indices)


def test_train_val_split_deterministic_per_seed():
    images, labels = numbered(60)
    first = train_val_split(images, labels, seed=3)
    again = train_val_split(images, labels, seed=3)
    other = train_val_split(images, labels, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[2], other[2])


def test_train_val_split_does_not_touch_global_rng():
    images, labels = numbered(30)
    state = torch.get_rng_state()
    train_val_split(images, labels)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_val_split_rejects_bad_fraction(fraction):
    images, labels = numbered(10)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(images, labels, val_fraction=fraction)


# ----------------------------------------------------------------------------- minibatch_indices


def test_minibatch_indices_cover_each_index_once_last_batch_smaller():
    batches = list(minibatch_indices(23, 5, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert all(b.dtype == torch.int64 for b in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(23))


def test_minibatch_indices_deterministic_and_shuffled():
    first = torch.cat(list(minibatch_indices(50, 8, torch.Generator().manual_seed(1))))
    again = torch.cat(list(minibatch_indices(50, 8, torch.Generator().manual_seed(1))))
    other = torch.cat(list(minibatch_indices(50, 8, torch.Generator().manual_seed(2))))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, torch.arange(50))


def test_minibatch_indices_new_order_each_epoch():
    generator = torch.Generator().manual_seed(0)
    epoch1 = torch.cat(list(minibatch_indices(40, 16, generator)))
    epoch2 = torch.cat(list(minibatch_indices(40, 16, generator)))
    assert sorted(epoch2.tolist()) == list(range(40))
    assert not torch.equal(epoch1, epoch2)


def test_fashion_mnist_is_read_from_its_own_folder_and_variable(tmp_path, monkeypatch, no_mnist_download):
    data = write_fake_mnist(tmp_path, seed=3, folder="FashionMNIST")
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path))
    monkeypatch.setenv("MNIST_ROOT", str(tmp_path / "elsewhere"))
    images, labels = load_dataset("fashion-mnist", train=False)
    assert torch.equal(labels, torch.from_numpy(data["t10k"][1]).long()) and images.shape == (5, 1, 28, 28)
    assert no_mnist_download == []


def test_missing_fashion_mnist_names_its_folder_and_variable(tmp_path, no_mnist_download):
    write_fake_mnist(tmp_path)  # MNIST is there, Fashion-MNIST is not
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "FASHION_MNIST_ROOT" in message
    assert all(name in message for name in MNIST_FILES)


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; choose from mnist, fashion-mnist"):
        load_dataset("cifar10")
