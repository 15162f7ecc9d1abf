#!/usr/bin/env bash
# One prepared call on a bare GPU machine (no network, no OpenMMLab packages): installs what is
# missing from the carried .gpu/wheels (made here by tools/gpu_wheels.sh), then runs the checks of
# tools/gpu_check.py, each in its own step with its own timeout, and prints one summary line each.
#
#   bash tools/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR] [--work DIR] [--deadline S]
#
#   --device  cuda (default when torch sees a GPU) or cpu
#   --quick   tiny lengths on the shipped CIFAR-10 subset (the CPU dry run: a few minutes on 2 cores)
#   --out     where summary.json, summary.txt and artifacts.tar.gz go (default $OUT, else
#             work_dirs/gpu_check); at most 4 files, no folders
#   --work    scratch folder for the runs and the unpacked data (default ${TMPDIR:-/tmp}/ssps_gpu_check)
#   --deadline  seconds for the whole check (default 450, 900 with --quick): items past it are skipped, each
#             item's timeout is cut to what is left
#
# Item (a), the offline install, runs here: each carried wheel whose module does not import is
# installed with pip --no-index --no-deps into $SSPS_SITE (default /tmp/ssps-site), which goes
# on PYTHONPATH after the repository; nothing already importable (torch, numpy, ...) is replaced.
# The interpreter is $PYTHON (default python3).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SITE="${SSPS_SITE:-/tmp/ssps-site}"
WHEELS="$ROOT/.gpu/wheels"
ARGS=("$@")
WORK="${TMPDIR:-/tmp}/ssps_gpu_check"
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    [ "${ARGS[$i]}" = "--work" ] && WORK="${ARGS[$((i + 1))]:-$WORK}"
done
mkdir -p "$WORK"
cd "$ROOT"

# -- (a) offline install -----------------------------------------------------------------------
start=$SECONDS
status=PASS
detail=""
log="$WORK/install.log"
: >"$log"
# wheel file prefix -> the module it provides
declare -A MODULE=([mmengine]=mmengine [mmpretrain]=mmpretrain [mmcv_lite]=mmcv [addict]=addict [yapf]=yapf
    [platformdirs]=platformdirs [termcolor]=termcolor [mat4py]=mat4py [model_index]=modelindex [markdown]=markdown
    [ordered_set]=ordered_set [click]=click [importlib_metadata]=importlib_metadata [zipp]=zipp
    [packaging]=packaging [setuptools]=pkg_resources [tqdm]=tqdm)
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
need=()
if [ -d "$WHEELS" ]; then
    for whl in "$WHEELS"/*.whl; do
        base="$(basename "$whl")"
        module="${MODULE[${base%%-*}]:-}"
        [ -z "$module" ] && { echo "unknown wheel $base: installed" >>"$log"; need+=("$whl"); continue; }
        if ! timeout 60 "$PY" -c "import $module" >>"$log" 2>&1; then
            need+=("$whl")
        fi
    done
fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing into $SITE: ${need[*]##*/}" >>"$log"
    mkdir -p "$SITE"
    if ! timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${need[@]}" >>"$log" 2>&1; then
        echo "pip failed; unpacking the (pure-Python) wheels with zipfile instead" >>"$log"
        for whl in "${need[@]}"; do "$PY" -m zipfile -e "$whl" "$SITE" >>"$log" 2>&1 || status=FAIL; done
    fi
    rm -rf "$SITE/tests"  # model-index ships a top-level `tests` package: keep it from shadowing anything
fi
# Python 3.12 has no distutils, and mmengine's collect_env (every Runner) imports it: without
# setuptools' distutils-precedence.pth (not read from a PYTHONPATH folder) give it setuptools' copy.
if ! timeout 60 "$PY" -c "import distutils" >/dev/null 2>&1; then
    src="$(timeout 60 "$PY" -c 'import os, setuptools; print(os.path.join(os.path.dirname(setuptools.__file__), "_distutils"))' 2>>"$log")"
    if [ -n "$src" ] && [ -d "$src" ]; then
        mkdir -p "$SITE" && rm -rf "$SITE/distutils" && cp -r "$src" "$SITE/distutils"
        echo "distutils: copied $src to $SITE/distutils" >>"$log"
        need+=("distutils")
    else
        echo "distutils: missing, and no setuptools to take it from" >>"$log"
        status=FAIL
    fi
fi
if [ "${#need[@]}" -gt 0 ]; then
    names=("${need[@]##*/}")
    detail="installed into $SITE: ${#need[@]} ( ${names[*]%%-[0-9]*} )"
else
    detail="nothing to install (every carried module imports)"
    [ -d "$WHEELS" ] || detail="no $WHEELS (run tools/gpu_wheels.sh where there is network); nothing installed"
fi
versions="$(timeout 120 "$PY" -c '
import torch, mmengine, mmcv, mmpretrain, ssps_nni.mmengine
print(f"torch {torch.__version__} mmengine {mmengine.__version__} mmcv {mmcv.__version__} mmpretrain {mmpretrain.__version__}")
' 2>>"$log")" || { status=FAIL; versions="import of ssps_nni.mmengine failed: see install.log"; }
echo "$versions" >>"$log"
printf '{"item": "install", "status": "%s", "seconds": %d, "detail": "%s; %s"}\n' \
    "$status" "$((SECONDS - start))" "$detail" "$versions" >"$WORK/install.json"
echo "[gpu_check] install: $status ($((SECONDS - start)) s) $detail; $versions"

# -- (b)-(e) -------------------------------------------------------------------------------------
export SSPS_CACHE_DIR="$WORK/cache" MPLCONFIGDIR="$WORK/mpl" PYTHONDONTWRITEBYTECODE=1
exec "$PY" "$ROOT/tools/gpu_check.py" --work "$WORK" --install-json "$WORK/install.json" "${ARGS[@]}"
