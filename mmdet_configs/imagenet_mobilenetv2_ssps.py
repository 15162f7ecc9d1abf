# SSPS mixed-precision search for MobileNet-V2 on ImageNet-1k (mmpretrain).
#
# Inherits mmpretrain's own config unchanged (model, data pipeline, runtime) and adds:
#   * the SSPS hook (converts the model in before_run, searches, writes policy.json),
#   * a short fine-tuning schedule from the float checkpoint.
# Set before running (see mmdet_configs/README.md):
#   load_from: the FP32 checkpoint, e.g. mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth
#   data_root: the ImageNet folder in mmpretrain's layout (train/, val/, meta/{train,val}.txt)
#     -> train_dataloader.dataset.data_root, val_dataloader.dataset.data_root,
#        test_dataloader.dataset.data_root
_base_ = 'mmpretrain::mobilenet_v2/mobilenet-v2_8xb32_in1k.py'

custom_imports = dict(imports=['ssps_nni.mmengine'], allow_failed_imports=False)

# Search length in optimizer steps: 2 epochs of ImageNet at 8 GPUs x 32 images (5005 iter/epoch).
custom_hooks = _base_.get('custom_hooks', []) + [
    dict(
        type='SSPSHook',
        budget='bitops=W4A8',
        candidates=(2, 3, 4, 5, 6, 8),
        total_steps=10000,
        warmup_steps=1000,
    )
]

# Fine-tune from the FP32 checkpoint while searching: 2 epochs, lr 1/10 of training, cosine.
load_from = None  # set to the FP32 checkpoint
train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=1)
optim_wrapper = dict(optimizer=dict(lr=0.0045))
param_scheduler = dict(_delete_=True, type='CosineAnnealingLR', by_epoch=True, T_max=2, eta_min=1e-4)
