#!/usr/bin/env bash
# Creates .venv inside the repository and installs the pinned set (setup.cfg; README.md).
# Idempotent: every step first checks whether its result is already there, so a second
# run takes seconds. A failing step stops the script, names the step and shows its log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSPS_VENV:-$ROOT/.venv}"
LOGS="$ROOT/.setup-logs"
PY="$VENV/bin/python"
mkdir -p "$LOGS"

step() {  # step NAME CHECK_CMD INSTALL_CMD
    local name="$1" check="$2" install="$3" log="$LOGS/$1.log"
    if bash -c "$check" >/dev/null 2>&1; then
        echo "[setup] $name: already done"
        return 0
    fi
    echo "[setup] $name: installing (log: $log)"
    local start=$SECONDS
    if ! bash -c "$install" >"$log" 2>&1; then
        echo "[setup] FAILED at step '$name'. Last 40 lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    if ! bash -c "$check" >>"$log" 2>&1; then
        echo "[setup] FAILED at step '$name': installed, but its check still fails. Last 40 lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    echo "[setup] $name: done in $((SECONDS - start)) s"
}

PIP="$PY -m pip install --disable-pip-version-check"

# Where the venv imports ssps_nni from. It must be this checkout: a venv shared by two
# checkouts (SSPS_VENV), or one whose editable install was made from another clone, would
# otherwise run the other checkout's code. Asked from / with -I (no cwd, no PYTHONPATH on
# the import path), and with find_spec, so the package is located the way the venv resolves it
# (the editable install's finder or .pth) without being imported.
installed_from() {  # prints the real path of the ssps_nni/__init__.py the venv resolves ("" if none)
    (cd / && "$PY" -I -c 'import importlib.util, os
s = importlib.util.find_spec("ssps_nni")
print(os.path.realpath(s.origin) if s is not None and s.origin else "")' 2>/dev/null) || true
}
installed_here() {  # true when the venv's ssps_nni is this checkout's
    [ "$(installed_from)" = "$(realpath "$ROOT/ssps_nni/__init__.py")" ]
}
export -f installed_from installed_here
export PY ROOT

# Fast path: nothing changed since the last complete run and the package is installed from
# this checkout (set SSPS_SETUP_CHECK=1 to re-check every step).
DONE_HASH="$(cat "$ROOT/setup.cfg" "$ROOT/tools/setup_env.sh" | sha256sum | cut -d' ' -f1)"
DONE="$VENV/.ssps-setup-done"
if [ -z "${SSPS_SETUP_CHECK:-}" ] && [ -x "$PY" ] && [ "$(cat "$DONE" 2>/dev/null)" = "$DONE_HASH" ]; then
    if installed_here; then
        echo "[setup] environment up to date: $VENV (SSPS_SETUP_CHECK=1 re-checks every step)"
        exit 0
    fi
    FROM="$(installed_from)"
    echo "[setup] ssps_nni in $VENV is installed from ${FROM:-nowhere (not importable)}, not from this checkout ($ROOT): reinstalling it"
fi

step venv \
    "test -x '$PY' && '$PY' -c 'import sys; assert sys.version_info[:2] == (3, 11)'" \
    "python3.11 -m venv '$VENV' && $PIP -q 'pip==24.3.1'"

step torch \
    "'$PY' -c 'import torch, torchvision; assert torch.__version__.split(\"+\")[0] == \"2.9.1\" and torchvision.__version__.split(\"+\")[0] == \"0.24.1\"'" \
    "$PIP torch==2.9.1 torchvision==0.24.1 numpy==1.26.4"

step build-tools \
    "'$PY' -c 'import pkg_resources, wheel, ninja, setuptools; assert int(setuptools.__version__.split(\".\")[0]) < 70'" \
    "$PIP 'setuptools<70' wheel ninja"

# mmcv 2.1.0 has no binary wheel on PyPI: build it with its C++ ops (about 10 minutes on
# 2 cores); pip's wheel cache makes later installs on the same machine instant.
step mmcv \
    "'$PY' -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == \"2.1.0\"'" \
    "MMCV_WITH_OPS=1 MAX_JOBS=\${MAX_JOBS:-2} $PIP --no-build-isolation mmcv==2.1.0 opencv-python==4.10.0.84"

# The stamp holds the hash of setup.cfg, so a changed pin re-runs this step.
REQ_HASH="$(sha256sum "$ROOT/setup.cfg" | cut -d' ' -f1)"
STAMP="$VENV/.ssps-nni-requirements"
# Also redone when the venv's ssps_nni comes from another checkout (installed_here).
step ssps-nni \
    "installed_here && test \"\$(cat '$STAMP' 2>/dev/null)\" = '$REQ_HASH' && '$PY' -c 'import ssps_nni, mmdet, mmpretrain, nni, pytorch_lightning, pytest, hypothesis, onnxruntime'" \
    "$PIP --no-build-isolation -e '$ROOT[test,export]' && echo '$REQ_HASH' > '$STAMP'"

# The default config's layer profile, so that `ssps search` refuses an unreachable budget there
# from the cache (ssps_nni/cli/cost_check.py); an optimisation only, so a failure just warns.
echo "[setup] layer profile of the default config: measuring (cached for fast budget checks)"
"$PY" -m ssps_nni.cli.cost_check >"$LOGS/profile.log" 2>&1 \
    || echo "[setup] warning: the default config's layer profile was not stored (see $LOGS/profile.log)"

echo "$DONE_HASH" > "$DONE"
echo "[setup] environment ready: $VENV"
