"""The study's control recipes sgd-2x and swa (study/recipes.py): sgd-2x's schedule, SWARecipe.fit with
stochastic weight averaging (averaged weights, SWALR's lrs, the shuffle shared with a plain run, counting
across both phases, BatchNorm), with_swa, the SWA fields' validation, and as_dict unchanged for every
earlier recipe."""

import json
import math
import re
from dataclasses import fields, replace

import pytest
import torch
from torch import nn

from conftest import load_script
from lenet_utils import ASAM, BASELINE, Recipe, minibatch_indices
from study.data import QUICK, recipe_for
from study.recipes import SGD, STUDY_RECIPES, SWA_ANNEAL_EPOCHS, SWA_ANNEAL_STRATEGY, SWARecipe, with_swa

# A tiny SWA recipe: 80 images in batches of 16 (5 steps an epoch), 16 epochs, lr 0.2 times 0.25 at
# epochs 4 and 8 (x0.25 each); SWA over epochs 9-16 at a target lr of 0.01 (from 0.2 * 0.25 ** 2).
PLAIN = Recipe("sgd", lr=0.2, batch_size=16, epochs=16, momentum=0.9, lr_milestones=(0.25, 0.5), lr_gamma=0.25)
TINY = with_swa(PLAIN, swa_start=0.5, swa_lr=0.01)
START = 8  # round(0.5 * 16)

# The fields Recipe had before SWA: every earlier recipe's as_dict() has exactly these keys.
FIELDS_BEFORE_SWA = ["optimizer", "lr", "batch_size", "epochs", "momentum", "weight_decay", "sam_rho", "sam_adaptive",
                     "reduction", "label_smoothing", "lr_milestones", "lr_gamma", "split", "noise_max_sigma"]
RECIPES_BEFORE_SWA = ("baseline", "asam", "sgd", "sam-0.05", "sam-0.5", "noise-aug", "adam-sam")


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def fit_recording(recipe, images, labels, seed=0, model=None):
    """Fit a linear model; return it, the history, the weights after every epoch and every model input."""
    model = model or linear_model()
    inputs, after_epoch = [], []
    model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    history, _ = recipe.fit(model, images, labels, seed=seed, progress=False,
                            on_epoch=lambda row: after_epoch.append(weights(model)))
    return model, history, after_epoch, inputs


# ----------------------------------------------------------------------------- the study's recipes


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler\.step\(\)`")  # no optimizer steps here
def test_sgd_2x_is_sgd_for_160_epochs_with_milestones_at_48_96_128():
    sgd, sgd_2x = STUDY_RECIPES["sgd"], STUDY_RECIPES["sgd-2x"]
    assert sgd is SGD and sgd == replace(ASAM, sam_rho=None, sam_adaptive=False)
    assert sgd_2x == replace(sgd, epochs=160) and sgd.epochs == 80
    optimizer = sgd_2x.make_optimizer(linear_model().parameters())
    scheduler = sgd_2x.make_scheduler(optimizer)
    assert sorted(scheduler.milestones.elements()) == [48, 96, 128]
    lrs = []
    for _ in range(160):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    hand = [0.1 * 0.2 ** ((e >= 48) + (e >= 96) + (e >= 128)) for e in range(160)]
    assert lrs == pytest.approx(hand, rel=1e-12)
    assert (lrs[47], lrs[48], lrs[96], lrs[128], lrs[159]) == pytest.approx((0.1, 0.02, 0.004, 0.0008, 0.0008))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler\.step\(\)`")
def test_swa_recipe_averages_the_last_20_of_sgds_80_epochs_at_the_lr_sgd_has_there():
    sgd, swa = STUDY_RECIPES["sgd"], STUDY_RECIPES["swa"]
    assert swa == with_swa(sgd, swa_start=0.75, swa_lr=0.004)
    assert swa.as_dict() == {**sgd.as_dict(), "swa_start": 0.75, "swa_lr": 0.004}  # sgd's settings, plus SWA
    assert isinstance(swa, SWARecipe) and not isinstance(sgd, SWARecipe) and not hasattr(sgd, "swa_epochs")
    assert swa.swa_epochs() == 20
    optimizer = swa.make_optimizer(linear_model().parameters())
    scheduler = swa.make_scheduler(optimizer)
    for _ in range(80 - 20):
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(swa.swa_lr, rel=1e-12)  # no jump at swa_start
    # the 2-epoch quick run still averages (its second epoch)
    assert replace(swa, epochs=2).swa_epochs() == 1 and replace(swa, epochs=1).swa_epochs() == 1


def test_earlier_recipes_as_dict_is_unchanged():
    assert set(RECIPES_BEFORE_SWA) | {"sgd-2x", "swa", *V3_RECIPES} == set(STUDY_RECIPES)
    assert [f.name for f in fields(Recipe)] == FIELDS_BEFORE_SWA  # the SWA fields are SWARecipe's alone
    for name in RECIPES_BEFORE_SWA:
        recipe = STUDY_RECIPES[name]
        assert list(recipe.as_dict()) == FIELDS_BEFORE_SWA, name
        assert recipe.as_dict() == {k: list(getattr(recipe, k)) if k == "lr_milestones" else getattr(recipe, k)
                                    for k in FIELDS_BEFORE_SWA}
    assert ASAM.as_dict() == {"optimizer": "sgd", "lr": 0.1, "batch_size": 128, "epochs": 80, "momentum": 0.9,
                              "weight_decay": 5e-4, "sam_rho": 2.0, "sam_adaptive": True, "reduction": "mean",
                              "label_smoothing": 0.1, "lr_milestones": [0.3, 0.6, 0.8], "lr_gamma": 0.2,
                              "split": True, "noise_max_sigma": None}
    assert list(STUDY_RECIPES["sgd-2x"].as_dict()) == FIELDS_BEFORE_SWA
    swa = STUDY_RECIPES["swa"].as_dict()
    assert list(swa) == [*FIELDS_BEFORE_SWA, "swa_start", "swa_lr"]
    assert (swa["swa_start"], swa["swa_lr"]) == (0.75, 0.004)
    json.dumps(swa)


def test_resume_accepts_records_written_before_the_swa_fields(tmp_path):
    """A record of an earlier recipe (hyper-parameters without swa_start/swa_lr) is still the same
    recipe for run_study's resume check; a swa record lacking them is not."""
    run_study = load_script("run_study")
    for name in ("sgd", "swa"):
        recipe = recipe_for(name, QUICK)
        old = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(recipe).items() if k in FIELDS_BEFORE_SWA}
        record = {"config": name, "seed": 0, "quick": True, "dataset": "mnist", "hyperparameters": old}
        (tmp_path / f"{name}_seed0.json").write_text(json.dumps(record))
    args = ["--quick", "--seeds", "0", "--out", str(tmp_path), "--configs"]
    assert [job.name for job in run_study.plan(run_study.parse_args([*args, "sgd"]))] == ["sgd"]  # pending, accepted
    with pytest.raises(SystemExit, match="another recipe"):
        run_study.plan(run_study.parse_args([*args, "swa"]))


# ----------------------------------------------------------------------------- validation


START_RANGE = "swa_start must be finite and > 0 and < 1, got"
LR_RANGE = "swa_lr must be finite and > 0, got"


@pytest.mark.parametrize("swa_start, swa_lr, error, message", [
    (0, 0.01, ValueError, f"{START_RANGE} 0"), (1, 0.01, ValueError, f"{START_RANGE} 1"),
    (1.5, 0.01, ValueError, f"{START_RANGE} 1.5"), (-0.25, 0.01, ValueError, f"{START_RANGE} -0.25"),
    (math.nan, 0.01, ValueError, f"{START_RANGE} nan"),
    (True, 0.01, TypeError, "swa_start must be a real number, got bool"),
    ("0.5", 0.01, TypeError, "swa_start must be a real number, got str"),
    (None, 0.01, TypeError, "swa_start must be a real number, got NoneType"),
    (0.75, 0, ValueError, f"{LR_RANGE} 0"), (0.75, -0.01, ValueError, f"{LR_RANGE} -0.01"),
    (0.75, math.inf, ValueError, f"{LR_RANGE} inf"),
    (0.75, "0.01", TypeError, "swa_lr must be a real number, got str"),
    (0.75, None, TypeError, "swa_lr must be a real number, got NoneType"),
])
def test_bad_swa_fields_raise(swa_start, swa_lr, error, message):
    pattern = re.escape(message) + "$"
    with pytest.raises(error, match=pattern):
        with_swa(STUDY_RECIPES["sgd"], swa_start=swa_start, swa_lr=swa_lr)
    with pytest.raises(error, match=pattern):
        replace(STUDY_RECIPES["swa"], swa_start=swa_start, swa_lr=swa_lr)
    with pytest.raises(error, match=pattern):
        SWARecipe("adam", lr=1e-3, batch_size=32, epochs=30, swa_start=swa_start, swa_lr=swa_lr)


def test_swa_fields_belong_to_swa_recipe_alone_and_are_keyword_only():
    with pytest.raises(TypeError, match="swa_start"):
        Recipe("adam", lr=1e-3, batch_size=32, epochs=30, swa_start=0.5, swa_lr=1e-4)
    with pytest.raises(TypeError, match="swa_start"):
        SWARecipe("adam", lr=1e-3, batch_size=32, epochs=30)  # no defaults: an SWARecipe averages
    with pytest.raises(TypeError, match="swa_start"):
        replace(BASELINE, swa_start=0.5)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'sgd'"):  # Recipe's own checks still run
        SWARecipe("rmsprop", lr=1e-3, batch_size=32, epochs=30, swa_start=0.5, swa_lr=1e-4)


def test_with_swa_keeps_every_setting_of_the_recipe():
    for recipe in (BASELINE, ASAM, SGD, replace(SGD, noise_max_sigma=0.6, epochs=7)):
        swa = with_swa(recipe, swa_start=0.5, swa_lr=1e-4)
        assert type(swa) is SWARecipe and (swa.swa_start, swa.swa_lr) == (0.5, 1e-4)
        assert all(getattr(swa, f.name) == getattr(recipe, f.name) for f in fields(Recipe))
    assert TINY == SWARecipe("sgd", lr=0.2, batch_size=16, epochs=16, momentum=0.9, lr_milestones=(0.25, 0.5),
                             lr_gamma=0.25, swa_start=0.5, swa_lr=0.01)


def test_good_swa_fields_are_accepted():
    assert with_swa(BASELINE, swa_start=0.5, swa_lr=1e-4).swa_epochs() == 15
    assert with_swa(ASAM, swa_start=0.01, swa_lr=1).swa_epochs() == 79


# ----------------------------------------------------------------------------- Recipe.fit with SWA


def test_swa_model_is_the_mean_of_the_weights_after_each_averaged_epoch(tiny_digits):
    images, labels = tiny_digits
    model, history, after_epoch, _ = fit_recording(TINY, images, labels)
    assert len(history) == len(after_epoch) == 16
    averaged = after_epoch[START:]
    assert len(averaged) == TINY.swa_epochs() == 8
    for p, *snapshots in zip(model.parameters(), *averaged):
        torch.testing.assert_close(p.detach(), torch.stack(snapshots).mean(0), rtol=1e-5, atol=1e-6)
    # not trivially so: the averaged epochs moved the weights, and the final model is none of them
    assert not torch.equal(averaged[0][0], averaged[-1][0])
    assert not any(torch.equal(model[1].weight, w[0]) for w in after_epoch)


def test_swa_lr_follows_multisteplr_then_swalr(tiny_digits):
    images, labels = tiny_digits
    model = linear_model()
    used = []  # the lr the optimizer has when each step is taken
    optimizer = TINY.make_optimizer(model.parameters())
    history, _ = TINY.fit(model, images, labels, optimizer=optimizer, progress=False,
                          on_step=lambda step: used.append(optimizer.param_groups[0]["lr"]))
    before = [0.2 * 0.25 ** ((e >= 4) + (e >= 8)) for e in range(START)]
    lr0 = 0.2 * 0.25 ** 2  # MultiStepLR's lr when SWA starts

    def anneal(t):
        return t if SWA_ANNEAL_STRATEGY == "linear" else (1 - math.cos(math.pi * t)) / 2

    swa = [0.01 * anneal(min(1, j / SWA_ANNEAL_EPOCHS)) + lr0 * (1 - anneal(min(1, j / SWA_ANNEAL_EPOCHS)))
           for j in range(16 - START)]
    assert [row["lr"] for row in history] == pytest.approx(before + swa, rel=1e-12)
    assert used == pytest.approx([lr for lr in before + swa for _ in range(5)], rel=1e-12)
    assert swa[0] == pytest.approx(lr0) and swa[SWA_ANNEAL_EPOCHS:] == pytest.approx([0.01] * 3)
    assert swa[1] != pytest.approx(lr0) and swa[1] != pytest.approx(0.01)  # the anneal is there, not a jump


@pytest.mark.parametrize("noise_max_sigma", [None, 0.3])
@pytest.mark.parametrize("as_generator", [False, True])
def test_swa_run_shuffles_and_trains_as_the_plain_run_until_swa_start(tiny_digits, noise_max_sigma, as_generator):
    """One generator through both phases: every batch (and noise draw) of the SWA run is the plain run's,
    and up to swa_start the two runs are the same run, bit for bit."""
    images, labels = tiny_digits
    swa, plain = replace(TINY, noise_max_sigma=noise_max_sigma), replace(PLAIN, noise_max_sigma=noise_max_sigma)

    def seed():
        return torch.Generator().manual_seed(7) if as_generator else 7

    _, swa_history, swa_weights, swa_inputs = fit_recording(swa, images, labels, seed=seed())
    _, plain_history, plain_weights, plain_inputs = fit_recording(plain, images, labels, seed=seed())
    assert len(swa_inputs) == len(plain_inputs) == 16 * 5
    assert all(torch.equal(a, b) for a, b in zip(swa_inputs, plain_inputs))
    if noise_max_sigma is None:  # the batches are the shuffle generator's own
        order = torch.cat(list(minibatch_indices(len(images), 16, torch.Generator().manual_seed(7))))
        assert torch.equal(torch.cat(swa_inputs[:5]), images[order])
    assert without_seconds(swa_history[:START]) == without_seconds(plain_history[:START])
    assert all(torch.equal(a, b) for e in range(START) for a, b in zip(swa_weights[e], plain_weights[e]))
    assert not torch.equal(swa_weights[-1][0], plain_weights[-1][0])  # SWALR then changes the lr


def test_swa_history_and_hooks_count_across_both_phases(tiny_digits):
    images, labels = tiny_digits
    rows, steps = [], []
    history, _ = TINY.fit(linear_model(), images, labels, progress=False, val_data=(images[:20], labels[:20]),
                          on_epoch=lambda row: rows.append(dict(row)), on_step=steps.append)
    assert [row["epoch"] for row in history] == list(range(1, 17))
    assert without_seconds(rows) == without_seconds(history)
    assert all({"val_loss", "val_acc", "train_loss", "lr"} <= set(row) for row in history)
    assert steps == list(range(16 * 5))


@pytest.mark.parametrize("epochs, averaged", [(1, 1), (2, 1), (4, 1), (8, 4)])
def test_short_swa_runs_average_at_least_one_epoch(tiny_digits, epochs, averaged):
    images, labels = tiny_digits
    recipe = replace(TINY, epochs=epochs, swa_start=0.75 if epochs <= 4 else 0.5)
    model, history, after_epoch, _ = fit_recording(recipe, images, labels)
    assert recipe.swa_epochs() == averaged and len(history) == epochs
    for p, *snapshots in zip(model.parameters(), *after_epoch[epochs - averaged:]):
        torch.testing.assert_close(p.detach(), torch.stack(snapshots).mean(0), rtol=1e-5, atol=1e-6)


def test_swa_recomputes_batchnorm_statistics_for_the_averaged_weights(tiny_digits):
    images, labels = tiny_digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 10))
    TINY.fit(model, images, labels, progress=False)
    with torch.no_grad():
        hidden = model[1](model[0](images))  # the averaged weights' pre-BatchNorm activations
    bn = model[2]
    # update_bn's cumulative average over the 5 equal batches = the mean over all 80 images
    torch.testing.assert_close(bn.running_mean, hidden.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, torch.stack([h.var(0) for h in hidden.split(16)]).mean(0),
                               rtol=1e-4, atol=1e-5)


V3_RECIPES = ("asam-0.5", "asam-1.0", "asam-4.0", "swa-0.02")


def test_v3_recipes_change_one_setting_each():
    """The v3 amendment's configurations: asam with another rho; sgd averaged at a fifth of its initial lr."""
    for name, rho in (("asam-0.5", 0.5), ("asam-1.0", 1.0), ("asam-4.0", 4.0)):
        assert STUDY_RECIPES[name] == replace(ASAM, sam_rho=rho)
        assert list(STUDY_RECIPES[name].as_dict()) == FIELDS_BEFORE_SWA
    sgd = STUDY_RECIPES["sgd"]
    assert STUDY_RECIPES["swa-0.02"] == with_swa(sgd, swa_start=0.75, swa_lr=sgd.lr / 5)
    assert STUDY_RECIPES["swa-0.02"].swa_epochs() == 20
