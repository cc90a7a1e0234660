#!/usr/bin/env bash
# Build what the MNIST-C reference check needs, outside the repository: a checkout of google-research/mnist-c at
# the commit checked (its corruptions.py and pessimal_noise_matrix, used where they are, never copied into this
# repository) and the 2019-era environment that corruptions.py needs: CPython 3.7 from pyenv, the last wheels of
# that era, Wand on Debian's ImageMagick 6.
# Usage: scripts/mnist_c_reference/setup_env.sh [VENV_DIR] [CHECKOUT_DIR]
#        (defaults /work/mnistc37venv and /work/mnist-c; needs root for apt)
set -euo pipefail
VENV=${1:-/work/mnistc37venv}
REF=${2:-/work/mnist-c}
COMMIT=bba57e4ccc282f106907c5239958e72298451ea7
PY37=${PY37:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/3.7.16/bin/python}
if [ ! -x "$PY37" ]; then
    echo "no CPython 3.7 at $PY37 (set PY37 to one; pyenv versions lists what is installed)" >&2
    exit 1
fi
if [ ! -d "$REF/.git" ]; then
    git clone https://github.com/google-research/mnist-c "$REF"
fi
git -C "$REF" checkout --quiet "$COMMIT"
# Wand loads libMagickWand at import time; motion_blur calls MagickMotionBlurImage through it.
apt-get install -y libmagickwand-dev
"$PY37" -m venv "$VENV"
# numpy 1.16 / scikit-image 0.15: the reference uses np.int, skimage's multichannel= and
# AffineTransform(shear=); scipy 1.2 still has scipy.ndimage.interpolation; Wand 0.5 binds ImageMagick 6.
"$VENV/bin/pip" install "numpy==1.16.6" "scipy==1.2.3" "scikit-image==0.15.0" "Wand==0.5.9" \
    "opencv-python-headless==4.1.2.30" "Pillow==6.2.2"
# The reference opens its pessimal-noise pickle by a relative path at import, hence the cd.
(cd "$REF" && "$VENV/bin/python" -c "import corruptions; print('reference corruptions.py imports')")
