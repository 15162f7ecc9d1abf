# The SSPS hook for an ImageNet-1k search (mmpretrain): the shared defaults (ssps_search.py) and
# the search length in optimizer steps, 2 epochs of ImageNet at 8 GPUs x 32 images (5005
# iterations per epoch), the first 1,000 of them warm-up. With another batch size, scale both
# (they count optimizer steps).
_base_ = ['./ssps_search.py']

custom_hooks = [dict(_base_.ssps_hook, total_steps=10000, warmup_steps=1000)]
