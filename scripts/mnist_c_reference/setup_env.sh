#!/usr/bin/env bash
# Build the 2019-era environment that the vendored MNIST-C reference (corruptions.py) needs, outside the
# repository: CPython 3.7 from pyenv, the last wheels of that era, Wand on Debian's ImageMagick 6.
# Usage: scripts/mnist_c_reference/setup_env.sh [VENV_DIR]   (default /work/mnistc37venv; needs root for apt)
set -euo pipefail
VENV=${1:-/work/mnistc37venv}
HERE=$(cd "$(dirname "$0")" && pwd)
PY37=${PY37:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/3.7.16/bin/python}
if [ ! -x "$PY37" ]; then
    echo "no CPython 3.7 at $PY37 (set PY37 to one; pyenv versions lists what is installed)" >&2
    exit 1
fi
# Wand loads libMagickWand at import time; motion_blur calls MagickMotionBlurImage through it.
apt-get install -y libmagickwand-dev
"$PY37" -m venv "$VENV"
# numpy 1.16 / scikit-image 0.15: the reference uses np.int, skimage's multichannel= and
# AffineTransform(shear=); scipy 1.2 still has scipy.ndimage.interpolation; Wand 0.5 binds ImageMagick 6.
"$VENV/bin/pip" install "numpy==1.16.6" "scipy==1.2.3" "scikit-image==0.15.0" "Wand==0.5.9" \
    "opencv-python-headless==4.1.2.30" "Pillow==6.2.2"
# The reference opens its pessimal-noise pickle by a relative path at import, hence the cd.
(cd "$HERE" && "$VENV/bin/python" -c "import corruptions; print('reference corruptions.py imports')")
