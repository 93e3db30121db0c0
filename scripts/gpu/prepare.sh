#!/usr/bin/env bash
# On the CPU machine, after `make install`: what scripts/gpu/check.sh needs on a bare GPU machine that has
# PyTorch but cannot download anything (this workplace's lent H200; see ../shared/gpu/wheelhouse.sh).
#   .whl/, .whl2/, .whl3/  our dependencies the GPU image lacks, at the versions in .venv (MuJoCo and MetaWorld
#               included): 111 MiB of wheels, split in parts of at most PART_MIB, since one call carries 64 MiB
#   .whl_peer/  transformers 5.5.4 + tokenizers 0.22.2, the side environment LeRobot's pi0 needs (--peer)
#   .gl/        the GL vendor-neutral loaders (libEGL ...) for MuJoCo's EGL rendering on the NVIDIA driver
# All three are git-ignored and travel with `carry`. A GPU machine of your own needs none of this: run
# `make install` there and `bash scripts/gpu/check.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELHOUSE=${WHEELHOUSE:-../shared/gpu/wheelhouse.sh}
[[ -x $WHEELHOUSE ]] || { echo "no $WHEELHOUSE: set WHEELHOUSE to the workplace's wheelhouse script"; exit 2; }
# Found by importing the GPU suite's and the benchmarks' modules here and subtracting the GPU image's packages.
also=(transformers pydantic pydantic-core annotated-types typing-inspection av num2words pyopengl glfw
      pytz googleapis-common-protos)
args=(); for p in "${also[@]}"; do args+=(--also "$p"); done
rm -rf .whl .whl2 .whl3
"$WHEELHOUSE" sim "${args[@]}"
# Largest first into the first part with room: av (40 MiB) and metaworld (37 MiB) cannot share a part.
PART_MIB=${PART_MIB:-45} python3 - <<'PY'
import os, pathlib, shutil
cap = int(os.environ["PART_MIB"]) * 2**20
wheels = sorted(pathlib.Path(".whl").glob("*.whl"), key=lambda w: -w.stat().st_size)
parts = [[".whl", 0], [".whl2", 0], [".whl3", 0]]
for w in wheels:
    part = next((p for p in parts if p[1] + w.stat().st_size <= cap), None)
    if part is None:
        raise SystemExit(f"{w.name} fits in no part of {cap >> 20} MiB: raise PART_MIB or add a part")
    part[1] += w.stat().st_size
    if part[0] != ".whl":
        os.makedirs(part[0], exist_ok=True)
        shutil.move(str(w), part[0])
for name, size in parts:
    print(f"{name}: {size / 2**20:.1f} MiB")
PY

rm -rf .whl_peer && mkdir -p .whl_peer
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .whl_peer transformers==5.5.4 tokenizers==0.22.2

mkdir -p .gl /tmp/amd64/partial
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${o[@]}" update -qq
(cd .gl && apt-get "${o[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .whl* .gl
