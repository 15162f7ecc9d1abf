# SSPS mixed-precision search for ResNet-34 on ImageNet-1k (mmpretrain).
#
# Inherits mmpretrain's own config unchanged (model, data pipeline, runtime) and the SSPS hook
# (_base_/ssps_search_imagenet.py: budget bitops=W4A4, candidates (2, 3, 4, 5, 6, 8), 10,000
# search steps of which 1,000 warm-up: 2 epochs at 8 GPUs x 32 images), and sets:
#   * a short fine-tuning schedule from the float checkpoint.
# Set before running (see mmdet_configs/README.md):
#   load_from: the FP32 checkpoint, e.g. resnet34_8xb32_in1k_20210831-f257d4e6.pth
#   data_root: the ImageNet folder in mmpretrain's layout (train/, val/, meta/{train,val}.txt)
#     -> train_dataloader.dataset.data_root, val_dataloader.dataset.data_root,
#        test_dataloader.dataset.data_root
_base_ = ['mmpretrain::resnet/resnet34_8xb32_in1k.py', './_base_/ssps_search_imagenet.py']

# Fine-tune from the FP32 checkpoint (load_from) while searching: 2 epochs, lr 1/10 of
# training, cosine.
# the epoch loop that stops right after the last decision (mmengine takes `type` or `by_epoch`)
train_cfg = dict(_delete_=True, type='SSPSEpochBasedTrainLoop', max_epochs=2, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', by_epoch=True, T_max=2, eta_min=1e-4)
