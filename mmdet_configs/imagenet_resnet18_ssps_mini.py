# ResNet-18 SSPS search on the 500-image ImageNet validation subset (../shared/data/imagenet_val_mini)
# at 112 px: a demo / smoke run that fits a CPU, on real ImageNet images and labels.
#
# The subset ships images/ + labels.csv (file,label,wnid,name); mmpretrain reads a text list
# "file label" per line. Make it once, from the repository root:
#   mkdir -p work_dirs && awk -F, 'NR > 1 {print $1, $2}' \
#       ../shared/data/imagenet_val_mini/labels.csv > work_dirs/imagenet_val_mini.txt
# (tests/mmengine/test_imagenet.py writes the same file into its own work_dir.)
# The same 500 images serve for training and validation: this checks the mechanics, not accuracy.
_base_ = './imagenet_resnet18_ssps.py'

image_dir = '../shared/data/imagenet_val_mini/images'  # relative to the working directory
ann_file = 'work_dirs/imagenet_val_mini.txt'
crop = 112

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=crop),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=crop * 8 // 7, edge='short'),
    dict(type='CenterCrop', crop_size=crop),
    dict(type='PackInputs'),
]
# data_root='' so that data_prefix and ann_file are taken as given (mmengine joins relative
# paths to a non-empty data_root).
train_dataloader = dict(
    batch_size=16, num_workers=2, persistent_workers=False,
    dataset=dict(data_root='', data_prefix=image_dir, ann_file=ann_file, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=32, num_workers=2, persistent_workers=False,
    dataset=dict(data_root='', data_prefix=image_dir, ann_file=ann_file, pipeline=test_pipeline))
test_dataloader = val_dataloader

# 500 images / 16 = 32 iterations per epoch; search for 3 epochs, validate at the end.
train_cfg = dict(max_epochs=3, val_interval=3)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', by_epoch=True, T_max=3, eta_min=1e-4)
custom_hooks = _base_.custom_hooks[:-1] + [dict(_base_.custom_hooks[-1], total_steps=96, warmup_steps=8)]
default_hooks = dict(logger=dict(interval=8))
