"""Run ``ssps`` with a test-only pause inside one checkpoint write (the fault-injection tests).

    python tests/mmengine/fault_helpers.py search CONFIG ...   # as ``python -m ssps_nni.cli search ...``

With ``SSPS_TEST_SAVE_PAUSE=NAME:SECONDS`` (e.g. ``epoch_2.pth:60``), mmengine's local file
backend writes the file ``NAME`` in two halves: the first half (flushed), then an empty marker
file ``NAME.writing`` next to it, a pause of ``SECONDS``, then the rest. A test that sees the
marker signals the process in the middle of that checkpoint save (SIGKILL leaves ``NAME``
truncated; SIGINT is held by ``ssps search`` until the save is done). Without the variable
this is the plain command. Nothing outside the tests uses it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PAUSE_ENV = 'SSPS_TEST_SAVE_PAUSE'


def install_pause(spec: str) -> None:
    """Patch ``LocalBackend.put`` to pause halfway through writing the file named in ``spec``."""
    from mmengine.fileio.backends.local_backend import LocalBackend

    name, seconds = spec.rsplit(':', 1)
    put = LocalBackend.put

    def paused_put(self, obj, filepath):
        path = Path(filepath)
        if path.name != name:
            return put(self, obj, filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
            Path(f'{path}.writing').touch()
            time.sleep(float(seconds))
            f.write(obj[len(obj) // 2:])

    LocalBackend.put = paused_put


if __name__ == '__main__':
    if os.environ.get(PAUSE_ENV):
        install_pause(os.environ[PAUSE_ENV])
    from ssps_nni.cli.main import main

    sys.exit(main(sys.argv[1:]))
