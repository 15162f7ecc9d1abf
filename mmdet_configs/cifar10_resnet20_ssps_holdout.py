# The folder config (full CIFAR-10 JPEGs, ../shared/data/cifar10) with a validation split of the
# TRAINING set: one training image in ten is held out (ssps_nni.proxy.holdout_split, index % 10
# == 9, 500 per class); search, sensitivity and retraining see the other 45,000, and the val/test
# loops score the 5,000 held-out images with the test pipeline. Defaults are chosen on this split,
# never on the test set (docs/algorithm.md §9). The shipped FP32 start was trained on all 50,000
# training images, so held-out accuracies are higher than test accuracies: compare them paired.
#   ssps train mmdet_configs/cifar10_resnet20_ssps_holdout.py --policy P.json --seed 0
_base_ = ['./cifar10_resnet20_ssps_folder.py']

train_dataloader = dict(dataset=dict(part='fit'))
val_dataloader = dict(dataset=dict(
    _delete_=True, type='CIFAR10Folder', data_root=_base_.data_root, test_mode=False, part='holdout',
    pipeline=_base_.test_pipeline))
test_dataloader = val_dataloader
