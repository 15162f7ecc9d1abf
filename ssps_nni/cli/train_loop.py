"""``ssps search``'s train loop: one that stops right after the search's last decision.

mmengine's default epoch loop (``train_cfg = dict(by_epoch=True, ...)`` or
``type='EpochBasedTrainLoop'``) reads ``stop_training`` only between epochs; ``ssps search``
puts ``SSPSEpochBasedTrainLoop`` (``ssps_nni.mmengine.loops``, same arguments) in its place so
that a decided search ends at once (docs/algorithm.md §6). Any other loop is kept: an
iteration-based one already stops after any iteration. No import of torch or mmengine here
(the command checks its input before loading them).
"""
from __future__ import annotations

#: ``ssps_nni.mmengine.loops.LOOP_TYPE`` (that module loads the training stack).
LOOP_TYPE = 'SSPSEpochBasedTrainLoop'
#: How a config names mmengine's own epoch loop.
DEFAULT_EPOCH_LOOPS = ('EpochBasedTrainLoop', 'mmengine.EpochBasedTrainLoop')


def use_stopping_loop(cfg) -> bool:
    """Replace the config's default epoch loop by :data:`LOOP_TYPE` (in place); True if replaced.

    ``train_cfg`` keeps its other keys (``max_epochs``, ``val_interval``, ...); ``by_epoch``
    goes (mmengine takes ``type`` or ``by_epoch``, not both).
    """
    train_cfg = cfg.get('train_cfg', None)
    if not train_cfg:
        return False
    loop_type = train_cfg.get('type', None)
    if loop_type is None and train_cfg.get('by_epoch', False) or loop_type in DEFAULT_EPOCH_LOOPS:
        new = {k: v for k, v in train_cfg.items() if k not in ('type', 'by_epoch')}
        cfg.train_cfg = dict(type=LOOP_TYPE, **new)
        return True
    return False
