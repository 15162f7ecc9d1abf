# SSPS mixed-precision search for RetinaNet-R18-FPN on COCO (mmdet).
#
# Inherits mmdet's own config unchanged (model, data pipeline, runtime) and the SSPS hook
# (_base_/ssps_search_coco.py: budget bitops=W4A4, candidates (2, 3, 4, 5, 6, 8), 14,000 search
# steps of which 1,000 warm-up: 2 epochs at 8 GPUs x 2 images), and sets:
#   * a short fine-tuning schedule from the float checkpoint,
#   * init_cfg=None for the backbone: the base would download torchvision://resnet18, and the
#     weights come from load_from anyway.
# Set before running (see mmdet_configs/README.md):
#   load_from: the FP32 detector, e.g. retinanet_r18_fpn_1x_coco_20220407_171055-614fd399.pth
#   data_root: COCO 2017 in mmdet's layout (train2017/, val2017/, annotations/)
#     -> {train,val,test}_dataloader.dataset.data_root and {val,test}_evaluator.ann_file
_base_ = ['mmdet::retinanet/retinanet_r18_fpn_1x_coco.py', './_base_/ssps_search_coco.py']

model = dict(backbone=dict(init_cfg=None))

# Fine-tune from the FP32 checkpoint (load_from) while searching: 2 epochs at 1/10 of the
# training lr, after the base's linear warm-up.
train_cfg = dict(type='SSPSEpochBasedTrainLoop', max_epochs=2, val_interval=1)  # stops right after the last decision
optim_wrapper = dict(optimizer=dict(lr=_base_.optim_wrapper.optimizer.lr / 10))
param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500)]
