"""mmengine driver of SSPS: ``SSPSHook``, ``QuantPolicyHook``, CIFAR ResNet-20 and CIFAR-10 registrations.

Importing this package registers, so that a config only needs::

    custom_imports = dict(imports=['ssps_nni.mmengine'], allow_failed_imports=False)
    custom_hooks = [dict(type='SSPSHook', budget='bitops=W4A4')]

- ``SSPSHook`` (search) and ``QuantPolicyHook`` (retrain a policy) in mmengine's root ``HOOKS``
  (found under ``default_scope`` mmpretrain and mmdet);
- ``SSPSEpochBasedTrainLoop`` (an epoch loop that also stops after any iteration) in its ``LOOPS``;
- ``ResNet20CIFAR`` in mmpretrain's ``MODELS``;
- ``CIFAR10Subset``, ``CIFAR10Folder`` and ``CIFAR10Cached`` in mmpretrain's ``DATASETS``;
- torch's ``weights_only`` safe globals for mmengine checkpoints (torch >= 2.6).
"""
from .serialization import register_safe_globals

register_safe_globals()

from .datasets import CIFAR10Cached, CIFAR10Folder, CIFAR10Subset  # noqa: E402
from .hook import SSPSHook  # noqa: E402
from .loops import SSPSEpochBasedTrainLoop  # noqa: E402
from .qat import QuantPolicyHook  # noqa: E402
from .resnet_cifar import ResNet20CIFAR  # noqa: E402

__all__ = ['SSPSHook', 'SSPSEpochBasedTrainLoop', 'QuantPolicyHook', 'ResNet20CIFAR', 'CIFAR10Subset',
           'CIFAR10Folder', 'CIFAR10Cached', 'register_safe_globals']
