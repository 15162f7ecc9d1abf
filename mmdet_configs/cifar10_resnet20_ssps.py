# SSPS search of a CIFAR ResNet-20 on CIFAR-10 with mmpretrain's CIFAR10 dataset.
#
# Default budget: bitops=W4A4, i.e. at most the BitOPs of every searched layer at 4-bit weights
# and 4-bit activations (the stem conv and the classifier are pinned at W8A8 and counted at 8/8);
# candidates (2, 3, 4, 5, 6, 8) for weights and activations.
# Set data_root to the folder that holds `cifar-10-batches-py/` (the official pickled files);
# nothing is downloaded (download=False). Other data: cifar10_resnet20_ssps_folder.py (JPEG
# folders of ../shared/data/cifar10), cifar10_resnet20_ssps_subset.py (the shipped subset).
# load_from: a full-precision checkpoint of this model (the same config without the SSPSHook);
# its keys load into the converted supernet (only the new quantizer keys are reported missing).
# With load_from, a lower learning rate (optim_wrapper.optimizer.lr=0.01) is usual.
#   python tools/search.py mmdet_configs/cifar10_resnet20_ssps.py \
#       --load-from work_dirs/resnet20_fp32/epoch_200.pth \
#       --cfg-options train_dataloader.dataset.data_root=PATH val_dataloader.dataset.data_root=PATH \
#                     test_dataloader.dataset.data_root=PATH
_base_ = [
    'mmpretrain::_base_/datasets/cifar10_bs16.py',
    'mmpretrain::_base_/schedules/cifar10_bs128.py',
    'mmpretrain::_base_/default_runtime.py',
    './_base_/ssps_search.py',
]

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet20CIFAR'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ))

data_root = 'data/cifar10'
train_dataloader = dict(
    batch_size=128, dataset=dict(data_root=data_root, download=False))
val_dataloader = dict(
    batch_size=256, dataset=dict(data_root=data_root, download=False))
test_dataloader = val_dataloader

# Search schedule: 30 epochs, cosine learning rate. The train loop is mmengine's epoch loop that
# also stops right after any iteration (ssps_nni.mmengine.loops), so the search ends at its last
# decision, not at the end of that epoch (_delete_: mmengine takes `type` or `by_epoch`).
max_epochs = 30
train_cfg = dict(_delete_=True, type='SSPSEpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)
param_scheduler = dict(
    _delete_=True, type='CosineAnnealingLR', by_epoch=True, T_max=max_epochs)

# The shared SSPS hook (_base_/ssps_search.py: budget bitops=W4A4, candidates (2, 3, 4, 5, 6, 8));
# no total_steps: the search spans the whole schedule. The warm-up is a fraction of the search
# (weights adapt to every bit-width first); calibration of the step sizes on 4 batches.
custom_hooks = [dict(_base_.ssps_hook, warmup_steps=0.1, calib_batches=4)]
randomness = dict(seed=0)
