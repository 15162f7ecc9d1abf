"""Files the package writes: atomically, and with the mode the user's umask gives (as mmengine's).

``tempfile.mkstemp`` creates its file with mode 0600, and a rename keeps it, so a result
written through a temporary file would be readable by its creator only, while the checkpoints
and logs beside it (plain ``open()``) are 0644 under the usual umask 022. :func:`atomic_write`
gives the file :func:`file_mode` before the rename.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["file_mode", "atomic_write"]


def file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask.

    The umask is read from ``/proc/self/status`` where it can be (Linux); elsewhere it is set
    and restored at once (``os.umask`` has no read-only form).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Writes a temporary file in the same folder, fsyncs it, then ``os.replace``s it. The file
    gets the mode of any file the user creates (:func:`file_mode`, as mmengine's checkpoints
    and logs), not the temporary file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
