#!/usr/bin/env bash
# Wheels that bench/gpu.py needs on a bare GPU machine without a package registry (its image has torch,
# transformers, accelerate, typer, rich, pyarrow, pandas, xxhash, but not datasets or evaluate).
# Downloads them here into .whl/ (git-ignored), for CPython 3.12 on x86-64 Linux, and prints the command
# to run on the GPU machine from the repository root, with .whl carried along.
#
#     bash bench/gpu_wheels.sh                 # datasets, evaluate and what they pin
#     PYARROW=1 bash bench/gpu_wheels.sh       # also pyarrow (~45 MB), where the machine's is older than 24
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# The versions this repository is tested with (pip show here); dill/multiprocess/fsspec as datasets pins them.
pkgs=(datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0)
[ "${PYARROW:-0}" = 1 ] && pkgs+=(pyarrow==26.0.1)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pkgs[@]}"
du -sh .whl
cat <<'CMD'
On the GPU machine, from the repository root, with .whl carried (one command, about 7 minutes):

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 -c "import pyarrow, datasets, evaluate; print('pyarrow', pyarrow.__version__)" && PYTHONUNBUFFERED=1 python3 bench/gpu.py --out "${OUT:-bench/out/gpu}"
CMD
