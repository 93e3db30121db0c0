#!/usr/bin/env bash
# The GPU checks: the GPU suite (tests/gpu) and the GPU benchmarks, each stage with its own time limit,
# everything written under $OUT: check.log (every stage's output), gpu_tests.xml, and DIR/bench.json + bench.md
# per benchmark (the lent machine sends back at most 8 files per call: hence the calls below).
#
#   bash scripts/gpu/check.sh [STAGE ...]     stages: install tests bench-train bench-infer bench-eval (default: all)
#
# On a GPU machine of your own: `make install`, then `PY=.venv/bin/python bash scripts/gpu/check.sh tests ...`.
# On this workplace's lent H200 (bare: PyTorch, no network), after scripts/gpu/prepare.sh here, as device runs
# in quick succession (a warm machine keeps what earlier calls installed; one call carries at most 64 MiB):
#   1. carry [".whl", ".gl"]                   command "bash scripts/gpu/check.sh install"
#   2. carry [".whl2"]                         command "bash scripts/gpu/check.sh install"
#   3. carry [".whl3", ".whl_peer"]            command "bash scripts/gpu/check.sh install tests bench-train"
#   4. (nothing)                               command "bash scripts/gpu/check.sh bench-infer bench-eval"
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/gpu_check}
PY=${PY:-python3}
SITE=${SITE:-/tmp/vla-site}  # our dependencies, installed from the carried wheels
PEER=${PEER:-/tmp/vla-peer}  # transformers 5.5.4 for LeRobot's pi0 (vla bench --peer)
mkdir -p "$OUT"
LOG="$OUT/check.log"
log() { echo "[$(date -u +%T)] $*" | tee -a "$LOG"; }

# Where the carried wheels went (also in calls that carry none) and the rendering/loader settings.
[[ -d $SITE ]] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia_egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[[ -f $nvidia_egl && -z ${__EGL_VENDOR_LIBRARY_FILENAMES:-} ]] && export __EGL_VENDOR_LIBRARY_FILENAMES=$nvidia_egl

# stage NAME SECONDS CMD...: run CMD with a time limit, its output appended to the log; never stops the script.
stage() {
  local name=$1 limit=$2; shift 2
  log "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  log "== $name: exit $rc after $((SECONDS - t0))s$([[ $rc == 124 ]] && echo ' (time limit)')"
}

install_wheels() {  # every carried part, each wheel once (a warm machine keeps the earlier parts)
  if [[ -d .gl ]] && ! ldconfig -p | grep -q libEGL.so.1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done && ldconfig && log "GL loaders unpacked from .gl"
  fi
  local part target
  for part in .whl .whl2 .whl3 .whl_peer; do
    [[ -d $part ]] || continue
    target=$SITE; [[ $part == .whl_peer ]] && target=$PEER
    mkdir -p "$target/.installed"
    local todo=()
    for w in "$part"/*.whl; do [[ -e $target/.installed/$(basename "$w") ]] || todo+=("$w"); done
    ((${#todo[@]})) || continue
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "${todo[@]}" \
      && for w in "${todo[@]}"; do touch "$target/.installed/$(basename "$w")"; done \
      && log "installed ${#todo[@]} wheels from $part into $target"
  done
  [[ -d $SITE ]] && export PYTHONPATH=$SITE:$PYTHONPATH
  "$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import importlib
missing = [m for m in ("lerobot", "deepspeed", "diffusers", "transformers", "mujoco", "metaworld", "av")
           if importlib.util.find_spec(m) is None]
print("still missing:", ", ".join(missing) if missing else "nothing")
PY
}

stages=("$@")
((${#stages[@]})) || stages=(install tests bench-train bench-infer bench-eval)
log "stages: ${stages[*]} on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1
for s in "${stages[@]}"; do
  case $s in
    install) install_wheels ;;
    tests)  # 4 at a time where pytest-xdist is installed (the lent machine has it and 16 cores)
      parallel=(); "$PY" -c "import xdist" 2>/dev/null && parallel=(-n 4)
      stage tests 420 "$PY" -m pytest -q -m gpu tests/gpu "${parallel[@]}" -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" ;;
    bench-train)
      stage bench-train-eager 200 "$PY" -m vla bench train --scale pi0 --batch-sizes 16,32 \
        --peer lerobot-pi0 --peer-pythonpath "$PEER" --out "$OUT/train_eager"
      stage bench-train-compiled 200 "$PY" -m vla bench train --scale pi0 --batch-sizes 16,32 --compile \
        --out "$OUT/train_compiled" ;;
    bench-infer)
      stage bench-infer-eager 150 "$PY" -m vla bench infer --scale pi0 \
        --peer lerobot-pi0 --peer-pythonpath "$PEER" --out "$OUT/infer_eager"
      stage bench-infer-compiled 200 "$PY" -m vla bench infer --scale pi0 --compile --out "$OUT/infer_compiled" ;;
    bench-eval) stage bench-eval 150 "$PY" -m vla bench eval --suite mw10 --num-envs 8 --out "$OUT/eval" ;;
    *) log "unknown stage $s (known: install tests bench-train bench-infer bench-eval)"; exit 2 ;;
  esac
done
log "done"
