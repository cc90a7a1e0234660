"""Apply the reference MNIST-C corruptions (google-research/mnist-c's corruptions.py) to the first N MNIST test images.

Runs under the Python 3.7 environment built by setup_env.sh (numpy 1.16, scikit-image 0.15, Wand on
Debian's ImageMagick), not the project venv; kept to what Python 3.7 accepts. Each
corruption is applied at its benchmark severity, the default of its function in the reference (the
paper's fixed severities; the reference repository ships no generation script that overrides them),
to a PIL image of the uint8 digit, exactly as the reference functions expect. One draw reseeds NumPy's
global generator (the reference's only randomness) before each corruption, so draws are reproducible.

Writes OUT/{corruption}_draw{seed}.npy: float32 (N, 28, 28) in [0, 1] (the reference's 0..255 float
output divided by 255, not rounded to uint8: the published dataset's own rounding is not in the code),
OUT/labels.npy, and OUT/manifest.json with the versions used.

    python generate.py --reference MNIST_C_CHECKOUT --mnist-raw DIR --out DIR [--n 2000] [--seeds 0 1 2]

MNIST_C_CHECKOUT is a clone of google-research/mnist-c (setup_env.sh makes one at the commit checked,
REFERENCE_COMMIT): the reference is used from its own repository, not copied into this one.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REFERENCE_COMMIT = "bba57e4ccc282f106907c5239958e72298451ea7"  # the commit whose numbers STUDY.md reports

# The 15 MNIST-C corruptions (the reference's CORRUPTIONS without 'identity').
NAMES = ["shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
         "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges"]


def read_idx(path, header, expected_magic):
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {magic} != {expected_magic})")
    return np.frombuffer(data, dtype=np.uint8, offset=header)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="a checkout of google-research/mnist-c")
    parser.add_argument("--mnist-raw", required=True, help="folder with t10k-images-idx3-ubyte and labels")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--names", nargs="+", default=NAMES)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    images = read_idx(os.path.join(args.mnist_raw, "t10k-images-idx3-ubyte"), 16, 2051).reshape(-1, 28, 28)
    labels = read_idx(os.path.join(args.mnist_raw, "t10k-labels-idx1-ubyte"), 8, 2049)
    if not 0 < args.n <= len(images):
        raise ValueError(f"--n must lie in 1..{len(images)}, got {args.n}")
    images, labels = images[: args.n], labels[: args.n]

    reference = os.path.abspath(args.reference)
    if not os.path.isfile(os.path.join(reference, "corruptions.py")):
        raise ValueError(f"--reference {reference} holds no corruptions.py: give a checkout of google-research/mnist-c")
    commit = subprocess.run(["git", "-C", reference, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown (not a git checkout)"
    if commit != REFERENCE_COMMIT:
        print(f"warning: the reference is at {commit}, not at {REFERENCE_COMMIT}, the commit checked", flush=True)
    out_dir = os.path.abspath(args.out)
    # The reference opens its pessimal-noise pickle by a relative path at import: import it from its folder.
    os.chdir(reference)
    sys.path.insert(0, reference)
    import corruptions as ref  # noqa: E402 (the reference, from its own checkout)

    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "labels.npy"), labels.astype(np.int64))
    seconds = {}
    for name in args.names:
        function = getattr(ref, name)
        start = time.time()
        for seed in args.seeds:
            np.random.seed(seed)
            out = np.stack([np.asarray(function(Image.fromarray(x)), dtype=np.float32) for x in images])
            if out.shape != images.shape or not np.isfinite(out).all():
                raise ValueError(f"{name} returned shape {out.shape} or non-finite values")
            np.save(os.path.join(out_dir, f"{name}_draw{seed}.npy"),
                    (np.clip(out, 0, 255) / 255.0).astype(np.float32))
        seconds[name] = time.time() - start
        print(f"{name:14s} {seconds[name]:6.1f} s for {len(args.seeds)} draws", flush=True)

    import cv2
    import PIL
    import scipy
    import skimage
    import wand.version
    manifest = {"n": args.n, "seeds": args.seeds, "names": args.names, "seconds": seconds,
                "python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                "scikit-image": skimage.__version__, "Pillow": PIL.__version__, "opencv": cv2.__version__,
                "Wand": wand.version.VERSION, "ImageMagick": wand.version.MAGICK_VERSION,
                "reference_commit": commit}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


if __name__ == "__main__":
    main()
