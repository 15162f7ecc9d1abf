# SSPS search of a CIFAR ResNet-20 on the full CIFAR-10 as per-class JPEG folders
# (../shared/data/cifar10: 50,000 train / 10,000 test images, libjpeg quality 75), served by
# CIFAR10Cached: the JPEGs are decoded once into a cached uint8 array ($SSPS_CACHE_DIR or
# ~/.cache/ssps-nni/datasets, keyed by the folder's contents), so a run starts in a second
# instead of decoding 60,000 JPEGs (type='CIFAR10Folder' decodes them at every build).
#
# Default budget: bitops=W4A4 (stem conv and classifier pinned at W8A8), candidates
# (2, 3, 4, 5, 6, 8); schedule as cifar10_resnet20_ssps.py (30 epochs, cosine).
# Set data_root to your `cifar10/` folder (holding train/ and test/); the default is relative
# to the repository root. load_from: the shipped FP32 ResNet-20 (checkpoints/README.md);
# --load-from PTH or --cfg-options load_from=None override it.
#   python tools/search.py mmdet_configs/cifar10_resnet20_ssps_folder.py
_base_ = ['./cifar10_resnet20_ssps.py']

data_root = '../shared/data/cifar10'
train_dataloader = dict(dataset=dict(
    _delete_=True, type='CIFAR10Cached', data_root=data_root, test_mode=False, pipeline=_base_.train_pipeline))
val_dataloader = dict(dataset=dict(
    _delete_=True, type='CIFAR10Cached', data_root=data_root, test_mode=True, pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
load_from = '{{ fileDirname }}/../checkpoints/resnet20_cifar10_fp32.pth'
