"""``ssps export``'s calibration data: the user's, checked against the model's input.

A checkpoint without step sizes (a float one) is calibrated before export
(:func:`ssps_nni.calibrate.calibrate_cells`) on, in this order:

1. ``--calib-data FOLDER``: the images of a folder (recursively; JPEG, PNG, GIF or WebP, read as
   RGB, or grey for a 1-channel input), resized to ``--input-shape`` (default: the ``--config``'s
   training data's shape, else 3x32x32) and normalised with
   ``--mean`` / ``--std`` (0..255 scale; default the ``--config``'s ``data_preprocessor``, else
   CIFAR-10's for the models of ``ssps_nni.models`` and ImageNet's for torchvision's);
2. ``--calib-data FILE`` (``.pt`` / ``.pth``: ``torch.save`` of a tensor; ``.npy``): float inputs
   ``(N, C, H, W)`` exactly as the model takes them (normalised); with ``--config`` and no
   ``--input-shape`` they must have the shape of the config's training data (one sample read);
3. ``--config`` alone: the config's training dataloader through the model's
   ``data_preprocessor``, as the search and ``ssps train`` calibrate;
4. none of these: the shipped CIFAR-10 subset, only for a ``3x32x32`` input.

A mismatch is refused (exit 2): inputs of another shape than ``--input-shape`` (a tensor file,
the config's data, the CIFAR-10 subset), a tensor file of another shape than the ``--config``'s
data (without ``--input-shape``), a channel count that the model's first convolution
does not take, a shape the model cannot run. Folder images are resized; one resized up by more
than 2x gets a warning (small images for a large input are likely not the model's data).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from .common import InputError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.gif', '.webp')
TENSOR_SUFFIXES = ('.pt', '.pth', '.npy')
#: mmpretrain's CIFAR-10 and ImageNet normalisations (RGB, 0..255).
CIFAR_MEAN, CIFAR_STD = (125.307, 122.961, 113.8575), (51.5865, 50.847, 51.255)
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
DEFAULT_SHAPE = (1, 3, 32, 32)
BATCH = 32
#: Up-scaling beyond which resized folder images get a warning.
MAX_UPSCALE = 2.0
DATA_FORM = ('--calib-data FOLDER (images, resized to --input-shape) or FILE (.pt/.pth/.npy: float inputs '
             '(N, C, H, W) as the model takes them), or --config CONFIG (its training data)')


def _dims(shape) -> str:
    return 'x'.join(str(d) for d in shape)


def parse_floats(text: str | None, option: str, channels: int) -> tuple[float, ...] | None:
    """``'123.7,116.3,103.5'`` -> floats, one per channel (None: not given).

    Raises:
        InputError: not numbers, or not one per channel.
    """
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(','))
    except ValueError:
        raise InputError(f'{option} must be comma-separated numbers (0..255 scale), one per channel, got {text!r}') from None
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise InputError(f'{option} has {len(values)} values for an input of {channels} channels; give one per channel')
    return values


def first_conv_channels(model) -> int | None:
    """Input channels of the model's first Conv2d (in module order), or None."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return None


def check_model_input(model, shape: tuple[int, ...]) -> None:
    """The float model runs on an input of ``shape`` (one forward of zeros, eval mode, no grad).

    Raises:
        InputError: the first convolution takes another channel count, or the forward fails.
    """
    import torch

    channels = first_conv_channels(model)
    if channels is not None and len(shape) == 4 and shape[1] != channels:
        raise InputError(f'--input-shape {_dims(shape)} has {shape[1]} channel(s) but the model\'s first convolution '
                         f'takes {channels}; give the model\'s input shape N,{channels},H,W')
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *shape[1:])))
    except Exception as err:  # noqa: BLE001 - any failure of the user's model on this shape
        raise InputError(f'the model cannot run on an input of shape {_dims(shape)} ({str(err).splitlines()[0]}); '
                         'give its input shape with --input-shape N,C,H,W') from None
    finally:
        for m, mode in modes.items():
            m.training = mode


def _batches(x, count: int) -> Iterator:
    for i in range(0, min(count, len(x)), BATCH):
        yield x[i:min(i + BATCH, count)]


def tensor_file(path: Path, count: int, shape: tuple[int, ...] | None):
    """Float inputs ``(N, C, H, W)`` of a tensor file, the first ``count``; their shape.

    Raises:
        InputError: unreadable, not a float tensor of 4 (or 3) dimensions, not finite, or of
            another ``C, H, W`` than ``shape``.
    """
    import numpy as np
    import torch

    try:
        x = torch.from_numpy(np.load(path)) if path.suffix == '.npy' else torch.load(path, map_location='cpu',
                                                                                        weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickle and numpy errors come in many types
        raise InputError(f'cannot read --calib-data {path}: {str(err).splitlines()[0]}; accepted: {DATA_FORM}') from None
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        x = x.unsqueeze(0)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        what = f'a {x.dim()}-d {x.dtype} tensor' if isinstance(x, torch.Tensor) else f'a {type(x).__name__}'
        raise InputError(f'--calib-data {path} holds {what}; accepted: a float tensor (N, C, H, W) of inputs as the '
                         'model takes them (normalised)')
    if not bool(torch.isfinite(x[:count]).all()):  # NaN/inf step sizes would export a model of NaN outputs
        raise InputError(f'--calib-data {path} holds NaN or infinite values; give finite inputs')
    if shape is not None and tuple(x.shape[1:]) != tuple(shape[1:]):
        raise InputError(f'--calib-data {path} holds inputs of {_dims(x.shape[1:])} but the model input (--input-shape) '
                         f'is {_dims(shape[1:])}; give inputs of the model\'s shape, or a folder of images to resize')
    return _batches(x.float(), count), (1, *x.shape[1:]), f'{min(count, len(x))} inputs of {path}'


def image_folder(path: Path, count: int, shape: tuple[int, ...], mean, std, warn: Callable[[str], None]):
    """``count`` images of a folder (spread over its sorted files), resized to ``shape``, normalised.

    Raises:
        InputError: no image in the folder, an image that cannot be decoded.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize

    files = sorted(p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f'--calib-data {path} holds no image ({", ".join(IMAGE_SUFFIXES)}); accepted: {DATA_FORM}')
    files = files[::max(1, len(files) // count)][:count]  # spread over the folder (classes in sub-folders)
    channels, height, width = shape[1:]
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    if channels not in (1, 3):
        raise InputError(f'--calib-data FOLDER gives 1- or 3-channel images; the input has {channels} channels: '
                         'give a tensor file of inputs instead')
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    images, smallest = [], None
    for file in files:
        try:
            img = decode_image(str(file), mode=mode)
        except (RuntimeError, ValueError) as err:
            raise InputError(f'cannot decode image {file} of --calib-data: {str(err).splitlines()[0]}') from None
        scale = max(height / img.shape[1], width / img.shape[2])
        if smallest is None or scale > smallest[0]:
            smallest = (scale, img.shape[1:])
        img = resize(img, [height, width], antialias=True).float()
        images.append((img - mean_t) / std_t)
    if smallest[0] > MAX_UPSCALE:
        warn(f'calibration images as small as {_dims(smallest[1])} are resized up to {height}x{width} '
             f'({smallest[0]:.1f}x): are they the model\'s data? (its input is --input-shape {_dims(shape)})')
    x = torch.stack(images)
    return _batches(x, count), shape, (f'{len(x)} images of {path} resized to {height}x{width}, normalised with '
                                       f'mean {tuple(round(v, 4) for v in mean)} std {tuple(round(v, 4) for v in std)}')


def config_data(config: str, model, count: int, shape: tuple[int, ...] | None, seed: int = 0):
    """``count`` training samples of the config's dataloader, through the model's ``data_preprocessor``.

    Raises:
        InputError: their shape differs from an explicit ``shape``.
    """
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner

    from ssps_nni.calibration_data import calibration_loader

    cfg = Config.fromfile(config)
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', None)):
        train = Runner.build_dataloader(cfg.train_dataloader, seed=seed)
        loader = calibration_loader(train, -(-count // BATCH), min(count, BATCH), seed=seed)
        inputs = []
        with torch.no_grad():
            for batch in loader:
                inputs.append(model.data_preprocessor(batch, False)['inputs'].float())
    x = torch.cat(inputs)[:count]
    if shape is not None and tuple(x.shape[1:]) != tuple(shape[1:]):
        raise InputError(f'the training data of --config {config} gives inputs of {_dims(x.shape[1:])} but '
                         f'--input-shape is {_dims(shape[1:])}; leave out --input-shape to export at the data\'s '
                         'shape, or give --calib-data of the model\'s shape')
    return _batches(x, count), (1, *x.shape[1:]), f'{len(x)} training samples of {config}'


def config_shape(config: str, model) -> tuple[int, ...]:
    """The model input ``(1, C, H, W)`` of the config's training data: one sample of :func:`config_data`."""
    return config_data(config, model, 1, None)[1]


def cifar_subset(count: int, shape: tuple[int, ...]):
    """``count`` normalised training images of the shipped CIFAR-10 subset ``(B, 3, 32, 32)``.

    Raises:
        InputError: the model input is not 3x32x32.
    """
    if tuple(shape[1:]) != (3, 32, 32):
        raise InputError(f'--calibrate without --calib-data calibrates on the shipped CIFAR-10 subset (3x32x32 '
                         f'images), which does not fit the model input {_dims(shape[1:])} (--input-shape); give '
                         f'the model\'s data: {DATA_FORM}')
    import numpy as np
    import torch

    from ssps_nni.data import load_cifar10_subset

    items = load_cifar10_subset('train')[:count]
    imgs = np.stack([it['img'] for it in items]).astype(np.float32)
    x = torch.from_numpy(((imgs - np.asarray(CIFAR_MEAN, np.float32)) / np.asarray(CIFAR_STD, np.float32))
                         .transpose(0, 3, 1, 2).copy())
    return _batches(x, count), shape, f'{len(x)} images of the shipped CIFAR-10 subset'


def default_normalisation(args, model) -> tuple[tuple, tuple]:
    """Mean and std for folder images: the config's ``data_preprocessor``, else by model family."""
    pre = getattr(model, 'data_preprocessor', None)
    if args.config and getattr(pre, 'mean', None) is not None:
        return tuple(pre.mean.flatten().tolist()), tuple(pre.std.flatten().tolist())
    from ssps_nni import models as ours

    if callable(getattr(ours, args.model, None)):
        return CIFAR_MEAN, CIFAR_STD
    return IMAGENET_MEAN, IMAGENET_STD


def calibration_data(args, model, shape: tuple[int, ...] | None, count: int, warn: Callable[[str], None]):
    """The calibration batches of ``ssps export`` (module docstring) and the input shape they fit.

    Args:
        args: the export options (``calib_data``, ``config``, ``model``, ``mean``, ``std``).
        model: the float model (mmengine models bring their ``data_preprocessor``).
        shape: ``--input-shape`` as given, or None (then the ``--config``'s data's shape, else the
            calibration data's, else 1,3,32,32).
        count: inputs to calibrate on.
        warn: called with one-line warnings.

    Returns:
        ``(batches, shape, description)``: an iterator of float tensors ``(B, C, H, W)``, the
        input shape to export at, and what the data is (for the log).

    Raises:
        InputError: a missing or unreadable ``--calib-data``, or data that does not fit the input.
    """
    if args.calib_data:
        path = Path(args.calib_data)
        if path.is_dir():
            shape = shape or (config_shape(args.config, model) if args.config else DEFAULT_SHAPE)
            mean, std = default_normalisation(args, model)
            mean = parse_floats(args.mean, '--mean', shape[1]) or mean
            std = parse_floats(args.std, '--std', shape[1]) or std
            return image_folder(path, count, shape, mean, std, warn)
        if path.is_file() and path.suffix.lower() in TENSOR_SUFFIXES:
            batches, data_shape, what = tensor_file(path, count, shape)
            if shape is None and args.config:  # the config's data is the model's input: the tensor must fit it
                expected = config_shape(args.config, model)
                if tuple(data_shape[1:]) != tuple(expected[1:]):
                    # --input-shape only where the channels fit the model (check_model_input refuses others)
                    other = (f', or --input-shape {_dims(data_shape).replace("x", ",")} to export at the tensor\'s '
                             'shape' if data_shape[1] == expected[1] else '')
                    raise InputError(f'--calib-data {path} holds inputs of {_dims(data_shape[1:])} but the training '
                                     f'data of --config {args.config} gives inputs of {_dims(expected[1:])}; give '
                                     f'inputs of that shape{other}')
            return batches, data_shape, what
        what = 'does not exist' if not path.exists() else 'is neither a folder nor a .pt/.pth/.npy file'
        raise InputError(f'--calib-data {path} {what}; accepted: {DATA_FORM}')
    if args.config:
        return config_data(args.config, model, count, shape)
    return cifar_subset(count, shape or DEFAULT_SHAPE)
