#!/usr/bin/env bash
# Makes .gpu/ (git-ignored): what a bare GPU machine without network needs to run
# tools/gpu_check.sh, carried with the repository (`carry: [".gpu"]`).
#
#   .gpu/wheels/       pure-Python wheels for Python 3.12 that such a machine lacks: mmengine,
#                      mmpretrain, mmcv-lite (mmcv 2.1.0 built here without its compiled ops:
#                      classification needs none; detection configs, which use mmcv.ops, do not
#                      run there) and their missing dependencies. No torch, numpy, scipy,
#                      matplotlib, opencv, pyyaml, rich or einops: the machine has them, and a
#                      second copy must not shadow them. No nni and no mmdet: too big / not needed
#                      for classification (the NNI driver is not checked there).
#   .gpu/cifar10.tar.gz  the full CIFAR-10 JPEG folders (train/, test/; about 20 MB), from
#                      $SSPS_SHARED_DATA/cifar10 or <repo>/../shared/data/cifar10.
#   .gpu/MANIFEST      sizes and sha256 of the above.
#
# Needs pip with network (run it here, not on the GPU machine). Idempotent: what is there
# is kept (delete a file to fetch or build it again). Prints the folder's total size.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.gpu"
WHEELS="$DEST/wheels"
PY="${PYTHON:-python3}"
mkdir -p "$WHEELS"

# Pinned: the versions of setup.cfg (mmengine, mmpretrain, mmcv) and dependencies that import
# with them on Python 3.12 (model-index provides the `modelindex` module mmpretrain imports;
# setuptools 69 provides the pkg_resources that mmengine's `mmpretrain::` config lookup imports).
PURE=(
    mmengine==0.10.7 mmpretrain==1.2.0
    addict==2.4.0 yapf==0.43.0 platformdirs==4.3.8 termcolor==3.1.0
    mat4py==0.6.0 model-index==0.1.11 markdown==3.8 ordered-set==4.1.0 click==8.2.1
    importlib-metadata==8.7.0 zipp==3.23.0 packaging==25.0 setuptools==69.5.1 tqdm==4.67.1
)

have() {  # have NAME==VERSION: a wheel of that project and version is in $WHEELS
    local spec="$1" name ver
    name="$(echo "${spec%%==*}" | tr '-' '_' | tr 'A-Z' 'a-z')"
    ver="${spec##*==}"
    compgen -G "$WHEELS/${name}-${ver}-*.whl" >/dev/null || compgen -G "$WHEELS/${name//_/-}-${ver}-*.whl" >/dev/null
}

missing=()
for spec in "${PURE[@]}"; do
    have "$spec" || missing+=("$spec")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "[gpu_wheels] downloading ${missing[*]}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${missing[@]}"
else
    echo "[gpu_wheels] wheels: all ${#PURE[@]} present"
fi

# mmcv 2.1.0 publishes no wheel: build it from its source archive without ops (MMCV_WITH_OPS=0
# names it mmcv-lite; the import name stays `mmcv`, and it is pure Python: py2.py3-none-any).
if ! compgen -G "$WHEELS/mmcv_lite-2.1.0-*.whl" >/dev/null; then
    build="$(mktemp -d)"
    trap 'rm -rf "$build"' EXIT
    echo "[gpu_wheels] building mmcv-lite 2.1.0 (mmcv without ops) in $build"
    # its setup.py imports pkg_resources: build in a venv with setuptools < 70 (no build isolation)
    "$PY" -m venv "$build/venv"
    "$build/venv/bin/python" -m pip install -q 'setuptools<70' wheel
    "$build/venv/bin/python" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$build" mmcv==2.1.0
    sdist="$build/mmcv-2.1.0.tar.gz"
    MMCV_WITH_OPS=0 "$build/venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$build" "$sdist"
    wheel="$(compgen -G "$build/mmcv_lite-2.1.0-*none-any.whl" || true)"
    if [ -z "$wheel" ]; then
        echo "[gpu_wheels] FAILED: no pure-Python mmcv_lite-2.1.0-*-none-any.whl was built; got: $(ls "$build")" >&2
        exit 1
    fi
    cp "$wheel" "$WHEELS/"
fi

# Full CIFAR-10 as a tar.gz: the GPU machine receives the repository only.
if [ ! -s "$DEST/cifar10.tar.gz" ]; then
    shared="${SSPS_SHARED_DATA:-$ROOT/../shared/data}"
    if [ ! -d "$shared/cifar10/train" ] || [ ! -d "$shared/cifar10/test" ]; then
        echo "[gpu_wheels] FAILED: no CIFAR-10 folders at $shared/cifar10/{train,test}; set SSPS_SHARED_DATA" >&2
        exit 1
    fi
    echo "[gpu_wheels] packing $shared/cifar10/{train,test} into $DEST/cifar10.tar.gz"
    tar -czf "$DEST/cifar10.tar.gz.part" -C "$shared" cifar10/train cifar10/test
    mv "$DEST/cifar10.tar.gz.part" "$DEST/cifar10.tar.gz"
fi

(cd "$DEST" && find . -type f ! -name MANIFEST -printf '%s %p\n' | sort -k2 \
    | while read -r size path; do echo "$(sha256sum "$path" | cut -c1-16) $size $path"; done) > "$DEST/MANIFEST"
echo "[gpu_wheels] $DEST: $(ls "$WHEELS" | wc -l) wheels, total $(du -sh "$DEST" | cut -f1) ($(du -sb "$DEST" | cut -f1) bytes)"
