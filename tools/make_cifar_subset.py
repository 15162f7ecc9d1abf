"""Build ``data/cifar10_subset.tar.gz``, the small real CIFAR-10 subset shipped with the repo.

The subset is class balanced and deterministic: the first 500 training images and the first
100 test images of each class, by file name (``NNNN.jpg`` = rank inside the class in the
original CIFAR-10 order). The JPEG bytes are stored unchanged (no re-encode). The archive holds::

    cifar10_subset/classes.txt            10 class names, line i = label i
    cifar10_subset/manifest.csv           split,path,label,class (path relative to cifar10_subset/)
    cifar10_subset/train/<class>/NNNN.jpg
    cifar10_subset/test/<class>/NNNN.jpg

The archive is byte-for-byte reproducible (fixed order, mtimes, owners and gzip header), and is
written through a temporary file and ``os.replace``, so a failure never leaves a partial archive.
Only the standard library is used.

Usage::

    python tools/make_cifar_subset.py [--src ../shared/data/cifar10] [--out data/cifar10_subset.tar.gz]
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer',
           'dog', 'frog', 'horse', 'ship', 'truck')
PER_CLASS = {'train': 500, 'test': 100}
PREFIX = 'cifar10_subset'
MAX_BYTES = 10 * 1024 * 1024
_NAME = re.compile(r'^\d{4}\.jpg$')


def select(src: Path) -> list[tuple[str, str, int, str]]:
    """Return the chosen images as ``(split, path, label, class)``, path relative to ``src``."""
    names_file = src / 'classes.txt'
    if names_file.is_file():
        found = tuple(names_file.read_text().split())
        if found != CLASSES:
            raise ValueError(f'{names_file} lists {found}, expected the CIFAR-10 order {CLASSES}')
    rows = []
    for split, n in PER_CLASS.items():
        for label, cls in enumerate(CLASSES):
            folder = src / split / cls
            if not folder.is_dir():
                raise FileNotFoundError(f'missing folder {folder} (expected <src>/{split}/<class>/NNNN.jpg)')
            files = sorted(p.name for p in folder.iterdir() if _NAME.match(p.name))
            if len(files) < n:
                raise ValueError(f'{folder} has {len(files)} NNNN.jpg files, need {n}')
            rows += [(split, f'{split}/{cls}/{name}', label, cls) for name in files[:n]]
    return rows


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f'{PREFIX}/{name}')
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ''
    tar.addfile(info, io.BytesIO(data))


def build(src: Path, out: Path) -> int:
    """Write the archive to ``out`` and return its size in bytes."""
    rows = select(src)
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator='\n')
    writer.writerow(('split', 'path', 'label', 'class'))
    writer.writerows(rows)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + '.', suffix='.tmp', dir=out.parent)
    try:
        with os.fdopen(fd, 'wb') as raw, \
                gzip.GzipFile(filename='', mode='wb', fileobj=raw, mtime=0, compresslevel=9) as gz, \
                tarfile.open(fileobj=gz, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            _add(tar, 'classes.txt', ('\n'.join(CLASSES) + '\n').encode())
            _add(tar, 'manifest.csv', manifest.getvalue().encode())
            for _, path, _, _ in rows:
                _add(tar, path, (src / path).read_bytes())
        size = os.path.getsize(tmp)
        if size >= MAX_BYTES:
            raise RuntimeError(f'subset is {size} bytes, over the {MAX_BYTES}-byte limit')
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--src', type=Path, default=ROOT.parent / 'shared' / 'data' / 'cifar10',
                        help='CIFAR-10 folder with train/<class>/NNNN.jpg and test/<class>/NNNN.jpg')
    parser.add_argument('--out', type=Path, default=ROOT / 'data' / 'cifar10_subset.tar.gz')
    args = parser.parse_args(argv)
    try:
        size = build(args.src, args.out)
    except (OSError, ValueError, RuntimeError) as err:
        print(f'make_cifar_subset: error: {err}', file=sys.stderr)
        return 1
    n = sum(PER_CLASS.values()) * len(CLASSES)
    print(f'wrote {args.out} ({n} images, {size} bytes)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
