# RetinaNet-R18 SSPS search on the 80-image COCO val2017 subset (../shared/data/coco_mini) at
# 320x192: a demo / smoke run that fits a CPU, on real COCO images and annotations.
# The same 80 images serve for training and validation: this checks the mechanics (training,
# search, CocoMetric, policy.json), not accuracy. Without load_from the detector starts from
# random weights and bbox mAP stays near 0.
_base_ = './coco_retinanet_r18_ssps.py'

data_root = '../shared/data/coco_mini/'  # relative to the working directory
ann_file = 'annotations/instances_val2017.json'
img_scale = (320, 192)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file=ann_file, data_prefix=dict(img='val2017/'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file=ann_file, data_prefix=dict(img='val2017/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + ann_file)
test_evaluator = val_evaluator

# 80 images / 2 = 40 iterations per epoch; search for 3 epochs, validate at the end.
train_cfg = dict(max_epochs=3, val_interval=3)
param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=20)]
custom_hooks = _base_.custom_hooks[:-1] + [dict(_base_.custom_hooks[-1], total_steps=120, warmup_steps=10)]
default_hooks = dict(logger=dict(interval=10))
