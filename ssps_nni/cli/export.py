"""``ssps export``: a searched policy as a deployable ONNX model (docs/algorithm.md §8).

Builds the float model, applies the policy (every layer at its fixed bits), loads the checkpoint
(of the retrained fixed model, of the search supernet, or a float one plus ``--calibrate``) and
writes an ONNX file whose quantized weights are integer initializers (int8; INT4 for weights of
<= 4 bits with ``--opset 21``) followed by DequantizeLinear, and whose layer inputs get
QuantizeLinear/DequantizeLinear pairs; optionally also the NNI ``config_list`` of the policy. It
prints the file's weight bytes next to the policy's (each weight at its bit-width).

Step sizes a checkpoint lacks are calibrated on the user's data (``ssps_nni.cli.calib_data``):
``--calib-data FOLDER`` (images resized to ``--input-shape``) or ``FILE`` (a tensor of model
inputs), else the ``--config``'s training data, else the shipped CIFAR-10 subset (3x32x32 only);
data that does not fit the model's input is refused.

Example::

    ssps export --policy work_dirs/policy.json --checkpoint work_dirs/qat.pth \\
        --model resnet20 --output resnet20_mp.onnx --nni-config config_list.json

``--model`` names a builder in ``ssps_nni.models`` (``resnet20``) or in ``torchvision.models``
(``resnet18``, ``mobilenet_v2``, ...), built without weights. ``--config`` instead builds the
``model`` of an mmengine config (e.g. mmpretrain's ``ImageClassifier`` with ``ResNet20CIFAR``), for
a checkpoint written by ``ssps train``; its ONNX graph is ``forward(mode='tensor')`` (logits),
on inputs normalised as the config's ``data_preprocessor`` does::

    ssps export --config mmdet_configs/cifar10_resnet20_ssps_subset.py \\
        --policy work_dirs/search/policy.json --checkpoint work_dirs/qat/epoch_6.pth --output r20.onnx

Policy layer names may be the other route's (an NNI policy, ``layer1.0.conv1``, for an
mmengine model, ``backbone.layer1.0.conv1``, or the reverse): they are matched by dotted suffix
and the mapping is printed (:meth:`ssps_nni.policy.Policy.for_model`); the ONNX metadata and
the NNI ``config_list`` use the model's names. A search's interim snapshot
(``policy.partial.json``, ``"final": false``) is refused unless ``--allow-partial`` is given
(then with a warning naming its cost against the budget).

Exit status: 0 on success, 2 on bad input (unreadable or non-final policy, missing checkpoint,
undecided or uncalibrated layers), with one ``ssps export: error:`` line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import PolicyError, SSPSError
from .common import InputError, check_output_file, fail, read_policy

PROG = 'ssps export'
#: Inputs ``--calib-data`` calibrates on when ``--calibrate`` is not given.
DEFAULT_CALIBRATE = 256


def build_model(name: str, num_classes: int):
    """Build ``name`` from ``ssps_nni.models`` or ``torchvision.models`` without weights.

    Raises:
        InputError: neither has a builder of that name.
    """
    from ssps_nni import models as ours

    builder = getattr(ours, name, None) if not name.startswith("_") else None
    if callable(builder):
        return builder(num_classes=num_classes)
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except ValueError:
        raise InputError(f"unknown model {name!r}: give a builder of ssps_nni.models (e.g. resnet20) "
                         "or a torchvision.models name (e.g. resnet18)") from None


def build_config_model(path: str):
    """The ``model`` of an mmengine config, built through its registries without weights.

    Raises:
        InputError: the config file does not exist.
    """
    if not Path(path).is_file():
        raise InputError(f"config not found: {path}; give the mmengine config the checkpoint was trained with "
                         "(e.g. mmdet_configs/cifar10_resnet20_ssps_subset.py), or --model NAME for a plain model")
    from mmengine.config import Config

    import ssps_nni.mmengine  # noqa: F401  (registries, torch safe globals)
    from ssps_nni.mmengine.qat import build_model_from_cfg

    return build_model_from_cfg(Config.fromfile(path))


def read_checkpoint(path: str, trust: bool) -> dict:
    """The ``state_dict`` of a checkpoint file (plain, ``{'state_dict': ...}`` or ``{'model': ...}``).

    Raises:
        InputError: missing, unreadable (``--trust-checkpoint`` unpickles other objects) or no tensors.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {path}; give the .pth of the retrained model (ssps train), "
                         "a search's epoch_N.pth, or a float state_dict with --calibrate N")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=not trust)
    except Exception as err:  # noqa: BLE001 - pickle errors come in many types
        hint = "" if trust else " (if you trust the file, add --trust-checkpoint to unpickle other objects)"
        raise InputError(f"cannot load checkpoint {path}: {str(err).splitlines()[0]}{hint}; accepted: a torch.save "
                         "file (the .pth of ssps train, a search's epoch_N.pth, or a float state_dict with "
                         "--calibrate N)") from None
    for key in ("state_dict", "model"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise InputError(f"checkpoint {path} holds no state_dict of tensors; accepted: a state_dict, or a dict "
                         "with one under 'state_dict' or 'model' (as ssps train and torch.save(model.state_dict()) write)")
    return ckpt


def parse_args(argv=None, prog: str = PROG) -> argparse.Namespace:
    """The command line; argparse exits with status 2 on a malformed one."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="policy.json written by the search")
    ap.add_argument("--checkpoint", required=True, help="weights (fixed-model, supernet or float state_dict)")
    ap.add_argument("--output", required=True, help="ONNX file to write")
    ap.add_argument("--model", default="resnet20", help="model builder name (default: resnet20)")
    ap.add_argument("--config", default=None,
                    help="mmengine config whose model to build instead of --model (checkpoints of ssps train)")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--input-shape", default=None,
                    help="model input N,C,H,W (default when calibrating: the --config's training data's, else the "
                         "calibration data's, else 1,3,32,32)")
    ap.add_argument("--opset", type=int, default=None,
                    help="ONNX opset (default 17, at least 13; from 21 on weights of <= 4 bits are stored as INT4)")
    ap.add_argument("--calibrate", type=int, default=None, metavar="N",
                    help="initialise missing step sizes on N inputs: of --calib-data, else of --config's training "
                         f"data, else of the shipped CIFAR-10 subset (3x32x32 inputs only); default with "
                         f"--calib-data: {DEFAULT_CALIBRATE}")
    ap.add_argument("--calib-data", metavar="FOLDER|FILE",
                    help="calibration data: a folder of images (resized to --input-shape, normalised with "
                         "--mean/--std) or a .pt/.pth/.npy float tensor (N, C, H, W) of model inputs")
    ap.add_argument("--mean", help="per-channel mean of folder images, 0..255 (default: the --config's, else "
                                   "CIFAR-10's for ssps_nni models, ImageNet's for torchvision ones)")
    ap.add_argument("--std", help="per-channel std of folder images, 0..255 (default as --mean)")
    ap.add_argument("--nni-config", default=None, help="also write the NNI config_list (JSON) here")
    ap.add_argument("--trust-checkpoint", action="store_true", help="torch.load with weights_only=False")
    ap.add_argument("--allow-partial", action="store_true",
                    help="accept a non-final policy (an interrupted search's policy.partial.json), with a warning")
    return ap.parse_args(argv)


def input_shape(text: str) -> tuple[int, ...]:
    """``'1,3,32,32'`` -> ``(1, 3, 32, 32)``; raises ``InputError`` for anything but 4 positive integers."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"--input-shape must be 4 comma-separated positive integers N,C,H,W (e.g. 1,3,32,32), "
                         f"got {text!r}")
    return shape


def calibrate(args, model, uncalibrated: list, shape, prog: str = PROG) -> tuple[int, ...]:
    """Initialise the step sizes the checkpoint lacks on the user's data (:mod:`.calib_data`).

    Returns:
        The input shape to export at (the data's when ``--input-shape`` was not given).

    Raises:
        InputError: no ``--calibrate``/``--calib-data``; data that does not fit the model.
    """
    from ssps_nni.calibrate import calibrate_cells

    from .calib_data import calibration_data

    count = args.calibrate or (DEFAULT_CALIBRATE if args.calib_data else 0)
    if count <= 0:
        raise InputError(
            f"the checkpoint has no step sizes for {len(uncalibrated)} quantized layers "
            f"({', '.join(uncalibrated[:4])}{' ...' if len(uncalibrated) > 4 else ''}); "
            "export the retrained fixed model's checkpoint, or pass --calibrate N (on your data: "
            "--calib-data FOLDER|FILE, or --config CONFIG)")
    batches, shape, what = calibration_data(args, model, shape, count,
                                            warn=lambda text: print(f"{prog}: warning: {text}", file=sys.stderr))
    print(f"{prog}: calibrating the step sizes of {len(uncalibrated)} layers on {what}")
    try:
        calibrate_cells(model, batches, uncalibrated)
    except RuntimeError as err:  # the model's own shape errors
        raise InputError(f"the model cannot run on the calibration inputs ({str(err).splitlines()[0]}); give data "
                         "of the model's input shape") from None
    return shape


def storage_line(path: Path, model) -> str:
    """One line: the file's size, its weights' bytes by storage type, the policy's weights at their bits."""
    import onnx

    from ssps_nni.onnx_storage import policy_weight_bytes, weight_bytes

    stored = weight_bytes(onnx.load(str(path)))
    parts = ", ".join(f"{kind} {stored[kind] / 1e6:.4g}" for kind in ("int8", "int4", "float") if stored[kind])
    return (f"{path}: {path.stat().st_size / 1e6:.4g} MB; weights in the file {stored['total'] / 1e6:.4g} MB "
            f"({parts or 'none'}), the policy's weights at their bit-widths {policy_weight_bytes(model) / 1e6:.4g} MB")


def run(args: argparse.Namespace, prog: str = PROG) -> Path:
    """Export as the options say; returns the ONNX path.

    Raises:
        InputError, SSPSError (PolicyError, PolicyNotFinalError without ``--allow-partial``,
        ExportError): one-line messages.
    """
    shape = input_shape(args.input_shape) if args.input_shape is not None else None
    check_output_file(args.output, '--output')
    if args.nni_config:
        check_output_file(args.nni_config, '--nni-config')
    if (args.mean or args.std) and not (args.calib_data and Path(args.calib_data).is_dir()):
        raise InputError('--mean/--std normalise the images of --calib-data FOLDER; leave them out otherwise')
    if args.calibrate is not None and args.calibrate < 1:
        raise InputError(f'--calibrate must be >= 1 (inputs to calibrate on), got {args.calibrate}')
    import torch

    from ssps_nni.checkpoint import load_fixed_state
    from ssps_nni.export import DEFAULT_OPSET, export_onnx
    from ssps_nni.apply_policy import apply_policy
    from ssps_nni.files import atomic_write

    from .calib_data import DEFAULT_SHAPE, check_model_input

    policy, warning = read_policy(args.policy, args.allow_partial)
    if warning:
        print(f"{prog}: {warning}", file=sys.stderr)
    if args.config:
        model = build_config_model(args.config)  # before reading: registers mmengine's safe globals
    state = read_checkpoint(args.checkpoint, args.trust_checkpoint)
    if not args.config:
        model = build_model(args.model, args.num_classes)
    if shape is not None:
        check_model_input(model, shape)  # the float model, before the policy's cells
    try:
        policy = policy.for_model(model, log=print)  # layer names of the model (the mapping printed)
    except PolicyError as err:
        raise PolicyError(f"{err}; give the policy searched for this model, or the --model / --config it was "
                          "searched on (names match exactly, or by an unambiguous dotted suffix)") from None
    apply_policy(model, policy)
    uncalibrated = load_fixed_state(model, state, policy)
    if uncalibrated:
        shape = calibrate(args, model, uncalibrated, shape, prog)
    elif args.calib_data:
        print(f"{prog}: the checkpoint has every step size; --calib-data is not used")
    model.eval()
    out = export_onnx(model, torch.zeros(shape or DEFAULT_SHAPE), args.output, opset=args.opset or DEFAULT_OPSET,
                      metadata={"ssps.policy": str(Path(args.policy).name),
                                "ssps.model": args.model if not args.config else Path(args.config).name})
    print(storage_line(out, model))
    if args.nni_config:
        from ssps_nni.nni.config_list import policy_to_nni_config_list  # imports NNI: only when asked

        atomic_write(args.nni_config, json.dumps(policy_to_nni_config_list(policy), indent=2) + "\n")
    return out


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps export``; returns the exit status (0 done, 2 bad input)."""
    args = parse_args(argv, prog)
    try:
        out = run(args, prog)
    except (InputError, SSPSError) as err:
        return fail(prog, err)
    print(f"wrote {out}")
    return 0
