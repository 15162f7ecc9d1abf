# The SSPS hook for a COCO 2017 search (mmdet): the shared defaults (ssps_search.py) and the
# search length in optimizer steps, 2 epochs of train2017 at 8 GPUs x 2 images (7330 iterations
# per epoch), the first 1,000 of them warm-up. With another batch size, scale both (they count
# optimizer steps).
_base_ = ['./ssps_search.py']

custom_hooks = [dict(_base_.ssps_hook, total_steps=14000, warmup_steps=1000)]
