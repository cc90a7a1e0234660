"""save_checkpoint / load_checkpoint and atomic_write: round trip, atomic writes, clear errors."""

import os

import pytest
import torch
from torch import nn

import lenet_utils as L
from conftest import reference_step
from lenet_utils import SAM, LeNet5, atomic_write, load_checkpoint, save_checkpoint


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def trained(make_optimizer, seed: int = 0):
    model = small_model(seed)
    opt = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    for _ in range(2):
        reference_step(model, opt, x, y)
    return model, opt


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        else:
            assert a[key] == b[key], key


OPTIMIZERS = {
    "Adam": lambda params: torch.optim.Adam(params, lr=1e-2),
    "SAM-SGD": lambda params: SAM(params, torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_round_trip_restores_weights_optimizer_and_meta(tmp_path, name):
    model, opt = trained(OPTIMIZERS[name])
    path = tmp_path / "a" / "b" / "ckpt.pt"  # parents are created
    meta = dict(epoch=3, history=[{"loss": 0.5, "acc": 90.0}], config={"rho": 0.1, "tags": ("x", None)},
                best=torch.tensor([1.5]), done=False)
    save_checkpoint(path, model, opt, **meta)
    assert path.is_file()

    fresh, _ = trained(OPTIMIZERS[name], seed=1)
    fresh_opt = OPTIMIZERS[name](fresh.parameters())
    checkpoint = load_checkpoint(path, fresh, fresh_opt)
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert_same_state(fresh_opt.state_dict()["state"], opt.state_dict()["state"])
    assert fresh_opt.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert checkpoint["epoch"] == 3 and checkpoint["done"] is False
    assert checkpoint["history"] == meta["history"] and checkpoint["config"] == meta["config"]
    assert torch.equal(checkpoint["best"], meta["best"])
    assert set(checkpoint) == {"model", "optimizer", *meta}


def test_file_loads_with_weights_only(tmp_path):
    model = LeNet5()
    save_checkpoint(tmp_path / "lenet.pt", model, note="hi")
    raw = torch.load(tmp_path / "lenet.pt", weights_only=True)
    assert raw["optimizer"] is None and raw["note"] == "hi"
    assert_same_state(raw["model"], model.state_dict())


def test_model_only_checkpoint(tmp_path):
    model = small_model()
    save_checkpoint(tmp_path / "m.pt", model)
    fresh = small_model(seed=5)
    checkpoint = load_checkpoint(tmp_path / "m.pt", fresh)
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert checkpoint["optimizer"] is None


def test_overwrite_replaces_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_model(0), run=1)
    save_checkpoint(path, small_model(1), run=2)
    fresh = small_model(2)
    assert load_checkpoint(path, fresh)["run"] == 2
    assert_same_state(fresh.state_dict(), small_model(1).state_dict())
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_failed_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_model(0), run=1)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(L.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, small_model(1), run=2)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pt"]  # no temporary file left behind


def test_checkpoint_is_readable_by_others(tmp_path):
    save_checkpoint(tmp_path / "m.pt", small_model())
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_atomic_write_replaces_only_on_success(tmp_path, mode):
    path = tmp_path / "sub" / "out.txt"
    data = "new" if mode == "w" else b"new"
    with atomic_write(path, mode) as f:
        f.write(data)
        assert not path.exists()  # nothing visible before the block ends
    assert path.read_bytes() == b"new"
    with pytest.raises(ValueError, match="boom"):
        with atomic_write(path, mode) as f:
            f.write(data * 3)
            raise ValueError("boom")
    assert path.read_bytes() == b"new"
    assert os.listdir(path.parent) == ["out.txt"]


@pytest.mark.parametrize("mode", ["a", "r", "w+", "x"])
def test_atomic_write_rejects_other_modes(tmp_path, mode):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_write(tmp_path / "out.txt", mode):
            pass
    assert os.listdir(tmp_path) == []


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(L.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "new.pt", small_model())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("meta", [dict(thing=object()), dict(nested={"a": [1, object()]}),
                                  dict(fn=len), dict(cfg={1.5j: 1})])
def test_non_plain_meta_is_rejected_before_writing(tmp_path, meta):
    path = tmp_path / "sub" / "ckpt.pt"
    with pytest.raises(TypeError, match="metadata"):
        save_checkpoint(path, small_model(), **meta)
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", small_model())


@pytest.mark.parametrize("corruption", ["random", "truncated", "empty", "not-a-dict"])
def test_corrupt_file_raises_value_error(tmp_path, corruption):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_model(), epoch=1)
    if corruption == "random":
        path.write_bytes(torch.randint(0, 256, (2000,), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(0)).numpy().tobytes())
    elif corruption == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif corruption == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    model = small_model(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=str(path.name)):
        load_checkpoint(path, model)
    assert_same_state(model.state_dict(), before)


def test_mismatched_model_raises_value_error(tmp_path):
    save_checkpoint(tmp_path / "lenet.pt", LeNet5())
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(tmp_path / "lenet.pt", nn.Linear(4, 3))


def test_optimizer_requested_but_not_saved(tmp_path):
    model = small_model()
    save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "m.pt", model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_mismatched_optimizer_raises_value_error(tmp_path):
    model, opt = trained(OPTIMIZERS["Adam"])
    save_checkpoint(tmp_path / "m.pt", model, opt)
    other = small_model()
    two_groups = torch.optim.Adam([{"params": [other[0].weight]}, {"params": [other[0].bias]}], lr=1e-2)
    with pytest.raises(ValueError, match="optimizer"):
        load_checkpoint(tmp_path / "m.pt", other, two_groups)
