"""The MNIST-C reference check in quick mode, in the project venv. The reference's own corruptions.py needs a 2019-era
Python 3.7 environment that CI does not have, so the checker (scripts/check_mnist_c_reference.py) gets reference
images made by our own corruptions (where reference and ours must agree exactly) and one tampered with (where they
must not), and the generator (scripts/mnist_c_reference/generate.py) runs over a stand-in reference checkout whose
corruptions return the digit unchanged, with stand-ins for the 2019 packages it only asks for their versions."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import MNIST_ROOT, ROOT, load_script, needs_mnist

pytestmark = needs_mnist

N, SEEDS, MODEL = 40, [0, 1], "sgd_seed3"


@pytest.fixture(scope="module")
def checker():
    return load_script("check_mnist_c_reference")


def write_reference(checker, folder, images, labels, tamper: str | None = None):
    """What generate.py writes, but with our corruptions as the 'reference' (``tamper``: that one inverted)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(checker.corruptions.CORRUPTIONS)
    for name in names:
        for seed in SEEDS:
            array = checker.corruptions.corrupt(images, name, seed=seed)[:, 0].numpy().astype(np.float32)
            np.save(folder / f"{name}_draw{seed}.npy", 1 - array if name == tamper else array)
    np.save(folder / "labels.npy", labels.numpy().astype(np.int64))
    manifest = {"n": N, "seeds": SEEDS, "names": names, "seconds": {name: 0.0 for name in names},
                "reference_commit": "test", **{k: "test" for k in ("python", "numpy", "scipy", "scikit-image",
                                                                  "Pillow", "opencv", "Wand", "ImageMagick")}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def run(checker, ref_dir, out):
    checker.main(["--ref-dir", str(ref_dir), "--n", str(N), "--seeds", *map(str, SEEDS), "--models", MODEL,
                  "--out", str(out)])
    return json.loads(out.read_text())


def test_identical_reference_gives_zero_differences(checker, mnist_test, tmp_path):
    images, labels = mnist_test[0][:N], mnist_test[1][:N]
    write_reference(checker, tmp_path / "ref", images, labels)
    report = run(checker, tmp_path / "ref", tmp_path / "out.json")
    rows = report["results"][MODEL]
    assert set(rows) == {*report["names"], "mnist_c_mean", "clean"}
    assert all(rows[name]["difference"]["mean"] == 0.0 for name in [*report["names"], "mnist_c_mean"])
    assert all(gap == 0.0 for gap in report["mean_abs_pixel_difference"].values())
    assert (ROOT / "results" / "study" / "mnist" / "weights" / f"{MODEL}.pt").is_file()


def test_a_changed_corruption_shows_in_its_row_only(checker, mnist_test, tmp_path):
    images, labels = mnist_test[0][:N], mnist_test[1][:N]
    write_reference(checker, tmp_path / "ref", images, labels, tamper="brightness")
    report = run(checker, tmp_path / "ref", tmp_path / "out.json")
    rows = report["results"][MODEL]
    assert rows["brightness"]["difference"]["mean"] != 0.0
    assert rows["mnist_c_mean"]["difference"]["mean"] != 0.0
    assert all(rows[name]["difference"]["mean"] == 0.0 for name in report["names"] if name != "brightness")


def test_other_test_images_are_refused(checker, mnist_test, tmp_path):
    images, labels = mnist_test[0][:N], mnist_test[1][:N]
    write_reference(checker, tmp_path / "ref", images, (labels + 1) % 10)
    with pytest.raises(ValueError, match="labels differ"):
        run(checker, tmp_path / "ref", tmp_path / "out.json")


def test_generate_writes_what_the_checker_reads(checker, mnist_test, tmp_path):
    reference, stubs = tmp_path / "mnist-c", tmp_path / "stubs"
    reference.mkdir()
    names = list(checker.corruptions.CORRUPTIONS)
    (reference / "corruptions.py").write_text("import numpy as np\n" + "".join(
        f"def {name}(x):\n    return np.asarray(x, dtype=np.float64)\n" for name in names))
    for module, text in {"cv2.py": "", "skimage/__init__.py": "", "wand/__init__.py": "",
                         "wand/version.py": "VERSION = MAGICK_VERSION = '0'\n"}.items():
        (stubs / module).parent.mkdir(parents=True, exist_ok=True)
        (stubs / module).write_text(text + "__version__ = '0'\n")
    out = tmp_path / "ref"
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "mnist_c_reference" / "generate.py"), "--reference",
                    str(reference), "--mnist-raw", str(MNIST_ROOT / "MNIST" / "raw"), "--out", str(out), "--n", str(N),
                    "--seeds", *map(str, SEEDS)], check=True, env=env, capture_output=True, cwd=tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["n"], manifest["seeds"], manifest["names"]) == (N, SEEDS, names)
    assert manifest["reference_commit"] == "unknown (not a git checkout)"
    images = mnist_test[0][:N, 0].numpy()
    for name in names:  # the identity 'corruption': the digit itself, in [0, 1]
        assert np.array_equal(np.load(out / f"{name}_draw1.npy"), (images * 255).round().astype(np.float32) / 255)
    assert np.array_equal(np.load(out / "labels.npy"), mnist_test[1][:N].numpy())
    report = run(checker, out, tmp_path / "out.json")  # the checker reads it
    assert report["results"][MODEL]["brightness"]["reference"]["mean"] == report["results"][MODEL]["clean"]
