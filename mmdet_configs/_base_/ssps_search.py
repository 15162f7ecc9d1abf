# The SSPS part every search config shares: the mmengine driver's registrations and the SSPS
# hook's defaults (`ssps_hook`). A search config lists it (or ssps_search_imagenet.py /
# ssps_search_coco.py, which add the hook with a dataset's search length) after its upstream
# config and overrides only what differs:
#
#   _base_ = ['mmpretrain::resnet/resnet18_8xb32_in1k.py', './_base_/ssps_search_imagenet.py']
#   train_cfg = dict(by_epoch=True, max_epochs=2, val_interval=1)   # the fine-tuning schedule
#
# mmengine refuses a key set by two bases, so these files set only keys the upstream configs do
# not (custom_imports, custom_hooks, ssps_hook); the schedule keys the upstream configs set
# (train_cfg, optim_wrapper, param_scheduler) are overridden in each search config. An upstream
# config with its own custom_hooks inherits this file and keeps them:
#   custom_hooks = _base_.get('custom_hooks', []) + [dict(_base_.ssps_hook, total_steps=N, warmup_steps=M)]
custom_imports = dict(imports=['ssps_nni.mmengine'], allow_failed_imports=False)

# The SSPSHook: its keyword arguments are the fields of ssps_nni.search.SearchConfig. Budget:
# at most the BitOPs of every searched layer at 4-bit weights and 4-bit activations; candidate
# bit-widths for weights and activations. The search length (`total_steps`, in optimizer steps;
# default: the whole training schedule) and the warm-up (`warmup_steps`: logits frozen, paths
# uniform) depend on the dataset and the batch size: ssps_search_imagenet.py and
# ssps_search_coco.py, or the config, set them. No optimizer key is needed: the hook gives the
# logits their own Adam (docs/algorithm.md §7) and adds the step sizes to the task optimizer as
# one param group (ssps_nni/mmengine/optim.py).
ssps_hook = dict(type='SSPSHook', budget='bitops=W4A4', candidates=(2, 3, 4, 5, 6, 8))
