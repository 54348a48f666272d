#!/usr/bin/env bash
# Downloads into .whl (ignored by git) the wheels that experiments/train_on_gpu.sh needs on the device
# tool's H200 image, at this checkout's .venv versions, for the image's Python 3.12. The image has
# PyTorch, numpy, scipy, pandas, scikit-learn, jinja2 and requests (the device notes' package list), not
# these; nilearn serves FIRE's MNI152 subjects. Run it here before the device call, carry .whl, and
# begin the call's command with the install line:
#   bash experiments/device_wheels.sh
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
PY=${PY:-.venv/bin/python}
packages=$($PY -c 'from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in ("monai", "nibabel", "pytorch-ignite", "isal", "fire", "termcolor", "nilearn")))')
rm -rf .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $packages
ls .whl
du -sh .whl
