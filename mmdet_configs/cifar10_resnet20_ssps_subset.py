# The default run of tools/search.py: SSPS search of a CIFAR ResNet-20 on the real CIFAR-10
# subset shipped in data/cifar10_subset.tar.gz (5,000 train / 1,000 test images), starting from
# the shipped FP32 checkpoint (checkpoints/resnet20_cifar10_fp32.pth, trained on the full
# CIFAR-10 training set; its accuracy and command are in checkpoints/README.md), with a short
# schedule: 6 epochs of 79 iterations (batch 64), meant to stay well under 10 minutes on 2 CPU
# cores.
#
# Default budget: bitops=W4A4 (stem conv and classifier pinned at W8A8), candidates
# (2, 3, 4, 5, 6, 8). No data_root to set. --load-from (or load_from=None) overrides the start.
#   python tools/search.py            # same as: python tools/search.py <this file>
_base_ = ['./cifar10_resnet20_ssps.py']

train_dataloader = dict(
    batch_size=64, num_workers=1, persistent_workers=False,
    dataset=dict(_delete_=True, type='CIFAR10Subset', test_mode=False, pipeline=_base_.train_pipeline))
val_dataloader = dict(
    batch_size=250, num_workers=1, persistent_workers=False,
    dataset=dict(_delete_=True, type='CIFAR10Subset', test_mode=True, pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader

max_epochs = 6
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)  # the base's SSPSEpochBasedTrainLoop
param_scheduler = dict(T_max=max_epochs)
optim_wrapper = dict(optimizer=dict(lr=0.01))  # fine-tuning from the FP32 start
load_from = '{{ fileDirname }}/../checkpoints/resnet20_cifar10_fp32.pth'
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=1, max_keep_ckpts=2))
