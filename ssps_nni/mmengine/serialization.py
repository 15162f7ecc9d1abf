"""Let torch >= 2.6 load mmengine checkpoints with ``weights_only=True`` (mmengine issue #1655).

mmengine 0.10.7 calls ``torch.load`` without ``weights_only`` (upstream issue #1655), and the
message hub it saves holds ``HistoryBuffer`` objects with numpy arrays and scalars, which the
restricted unpickler refuses. Registering those few types as safe globals fixes ``load_from``
and ``resume``; importing :mod:`ssps_nni.mmengine` does it once.
"""
from __future__ import annotations

import numpy as np
import torch


def safe_globals() -> list:
    """The types an mmengine checkpoint pickles besides tensors and builtins."""
    from mmengine.logging import HistoryBuffer

    types = [HistoryBuffer, np.ndarray, np.dtype, getattr,
             np.core.multiarray.scalar, np.core.multiarray._reconstruct]
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        types += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return types


def register_safe_globals() -> None:
    """Add :func:`safe_globals` to torch's ``weights_only`` allow-list (no-op on old torch)."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(safe_globals())
