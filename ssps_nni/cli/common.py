"""What the commands share: the one input error, the repository paths and the argument vocabulary.

Only the standard library is imported here, so that ``--help`` and refusals of malformed input
answer before torch, mmengine or the OpenMMLab packages load (each import costs seconds on a
small CPU). Heavier checks import what they need inside the function.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import shutil
import sys
from pathlib import Path

#: The repository a checkout's editable install runs from (``ssps_nni/`` is inside it).
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'mmdet_configs'
DEFAULT_CONFIG = CONFIGS / 'cifar10_resnet20_ssps_subset.py'
DEFAULT_CONFIG_NAME = 'mmdet_configs/cifar10_resnet20_ssps_subset.py'
CANDIDATE_FORM = ('comma-separated integer bit-widths, e.g. 2,3,4,6,8: weights in 2..32, activations in 1..32 '
                  '(32 = not quantized)')
#: Shown by ``--help``; ``ssps_nni.cost.BUDGET_FORMS`` is the parser's own list (imports torch).
BUDGET_HELP = ('hardware budget(s), comma-separated, e.g. bitops=W4A4, bitops=1.2G, size=1.5MB, '
               'bitfusion=W4A4, lut=3.5 or bitops=W4A4,size=1.5MB')


#: Free space below which an output folder is refused: checkpoints and logs need room
#: (:func:`check_output_dir`; a run's own estimate may ask for more).
MIN_FREE_BYTES = 64 * 2**20
#: The same for the folder of a result file (an ONNX model, a report).
MIN_FREE_FILES = 8 * 2**20


class InputError(Exception):
    """Bad command-line or config input; the command prints the message as one line and exits 2."""


def fail(prog: str, err: BaseException) -> int:
    """Print ``PROG: error: MESSAGE`` as one line on stderr (argparse's form); return the exit status.

    Returns:
        ``err.exit_status`` where the error has one (``ssps_nni.errors``: 3 for a diverged
        search), else 2 (bad input, as argparse).
    """
    message = ' '.join(str(err).split())  # one line, whatever the message's own line breaks
    print(f'{prog}: error: {message}', file=sys.stderr)
    return int(getattr(err, 'exit_status', 2))


def repo_path(*parts: str, what: str) -> Path:
    """A path inside the repository checkout, refused clearly when the checkout is not there.

    Args:
        parts: path parts below the repository root (e.g. ``'mmdet_configs', 'x.py'``).
        what: what the path is for, for the message.

    Raises:
        InputError: the path does not exist (for example ssps-nni installed without its repository).
    """
    path = REPO.joinpath(*parts)
    if not path.exists():
        raise InputError(f'{what} {path} does not exist: it ships with the ssps-nni repository '
                         f'(mmdet_configs/, data/, checkpoints/), which this installation at {REPO} '
                         'does not have; run from a checkout of the repository, or give the path explicitly')
    return path


def config_path(config: str | None) -> str:
    """The config to run: ``config`` as given, or the default run's config of the repository.

    Raises:
        InputError: the given file does not exist, or no config was given and the repository's
            ``mmdet_configs/`` is missing.
    """
    if config is None:
        return str(repo_path('mmdet_configs', DEFAULT_CONFIG.name, what='the default config'))
    if not osp.isfile(config):
        raise InputError(f'config file {config!r} does not exist (relative to {os.getcwd()}); give a path to an '
                         f'mmengine config, or none for {DEFAULT_CONFIG_NAME}')
    return config


class _CfgOptions(argparse.Action):
    """mmengine's ``DictAction`` (``KEY=VALUE`` with lists and tuples), imported only when used."""

    def __call__(self, parser, namespace, values, option_string=None):
        from mmengine.config import DictAction

        bad = [v for v in values if '=' not in v]
        if bad:  # DictAction would raise a ValueError (a traceback, exit 1)
            parser.error(f'argument --cfg-options: {bad[0]!r} is not KEY=VALUE, e.g. train_cfg.max_epochs=2')
        DictAction(self.option_strings, self.dest)(parser, namespace, values, option_string)


def merge_cfg_options(cfg, options) -> None:
    """``cfg.merge_from_dict(options)`` (``--cfg-options``); what mmengine refuses becomes one input error.

    Raises:
        InputError: a key mmengine cannot merge, e.g. a list index past the list's end.
    """
    try:
        cfg.merge_from_dict(options)
    except (KeyError, TypeError, ValueError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise InputError(f'--cfg-options: {text}') from None


# -- the shared argument vocabulary ----------------------------------------------------------------

def add_config(parser: argparse.ArgumentParser) -> None:
    """Positional ``CONFIG`` (optional; None means the default run's config)."""
    parser.add_argument('config', nargs='?', default=None, metavar='CONFIG',
                        help=f'mmengine config file (default: {DEFAULT_CONFIG_NAME} of the repository)')


def add_work_dir(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument('--work-dir', help=f'output folder (default: {default})')


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument('--seed', type=int, help=f'random seed of {what}')


def add_load_from(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument('--load-from', metavar='PTH', help=f'checkpoint to start from ({what})')


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cfg-options', nargs='+', action=_CfgOptions, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_epochs=2')


def add_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--budget', help=BUDGET_HELP)


def add_candidates(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--candidates', help=f'candidate bit-widths: {CANDIDATE_FORM}')


# -- checks of the shared arguments ----------------------------------------------------------------

def dataset_paths(dataset) -> list[tuple[str, str]]:
    """``(key, path)`` of the local data a dataset config points at (wrappers included)."""
    if not isinstance(dataset, dict):
        return []
    found = []
    if dataset.get('data_root'):
        found.append(('data_root', str(dataset['data_root'])))
    elif isinstance(dataset.get('data_prefix'), str) and dataset['data_prefix']:
        found.append(('data_prefix', dataset['data_prefix']))
    if dataset.get('archive'):
        found.append(('archive', str(dataset['archive'])))
    for key in ('dataset', 'datasets'):
        inner = dataset.get(key)
        for sub in inner if isinstance(inner, (list, tuple)) else [inner]:
            found += dataset_paths(sub)
    return found


def check_data_paths(cfg) -> None:
    """Every local data path of the train/val/test dataloaders exists (no data is downloaded).

    Raises:
        InputError: the first missing path, with the ``--cfg-options`` key that sets it.
    """
    for split in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(split, None)
        for key, path in dataset_paths(loader.get('dataset') if isinstance(loader, dict) else None):
            if not osp.exists(path):
                raise InputError(
                    f'{split}.dataset.{key} = {path!r} does not exist (relative to {os.getcwd()}). '
                    f'Set it to your local copy with --cfg-options {split}.dataset.{key}=PATH, or give no '
                    'CONFIG to use the shipped CIFAR-10 subset. No data is downloaded: there is no network.')


def check_load_from(load_from, hint: str) -> None:
    """``load_from`` is a local PyTorch checkpoint (or unset).

    Args:
        hint: what to give instead, appended to the message.

    Raises:
        InputError: not a local file (URLs are not fetched), or not a checkpoint.
    """
    if not load_from:
        return
    if not osp.isfile(load_from):
        raise InputError(f'load_from = {load_from!r} is not a local file (URLs are not fetched: no network). {hint}')
    from ssps_nni.checkpoint import checkpoint_problem

    problem = checkpoint_problem(load_from)
    if problem:
        raise InputError(f'load_from: {problem}. {hint}')


def read_policy(path: str, allow_partial: bool = False):
    """Load a policy file for retraining or export; refuse a search's interim snapshot.

    Args:
        path: the ``--policy`` file.
        allow_partial: ``--allow-partial`` was given: accept a non-final policy.

    Returns:
        ``(policy, warning)``: the warning (None for a final policy) names how far the search
        got and the policy's cost against each budget (:func:`ssps_nni.policy.require_final`).

    Raises:
        PolicyError: unreadable, not JSON or malformed (the core's message, plus what to give).
        PolicyNotFinalError: ``"final": false`` and not ``allow_partial``; names ``--allow-partial``.
    """
    from ssps_nni.errors import PolicyError
    from ssps_nni.policy import load_policy, require_final

    try:
        policy = load_policy(path)
    except PolicyError as err:
        raise PolicyError(f'{err} (--policy takes the policy.json written by ssps search)') from None
    return policy, require_final(policy, path, allow=allow_partial, allow_option='--allow-partial')


def add_ssps_imports(cfg) -> None:
    """Add ``ssps_nni.mmengine`` to the config's ``custom_imports`` (its hooks and registrations)."""
    custom_imports = cfg.get('custom_imports', None) or dict(imports=[], allow_failed_imports=False)
    if 'ssps_nni.mmengine' not in custom_imports.get('imports', []):
        custom_imports['imports'] = list(custom_imports.get('imports', [])) + ['ssps_nni.mmengine']
    cfg.custom_imports = custom_imports


def default_work_dir(cfg, config: str, suffix: str = '') -> str:
    """``cfg.work_dir`` if the config sets one, else ``work_dirs/<config name><suffix>``."""
    if cfg.get('work_dir', None) is not None:
        return cfg.work_dir
    return osp.join('./work_dirs', osp.splitext(osp.basename(config))[0] + suffix)


# -- device and mixed precision (ssps search, ssps train) ------------------------------------------

AMP_DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16'}


def add_device_amp(parser: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda`` and ``--amp none|bf16|fp16`` (see :func:`apply_device_amp`)."""
    parser.add_argument('--device', choices=('cpu', 'cuda'),
                        help='where the model trains (default: cuda when a GPU is visible, as mmengine picks)')
    parser.add_argument('--amp', choices=('none', *AMP_DTYPES),
                        help="mixed precision: mmengine's AmpOptimWrapper with bfloat16 or float16 autocast and a "
                             "dynamic loss scale (CUDA only); none: plain fp32 OptimWrapper; default: the config's")


def select_device(args) -> None:
    """Make ``--device`` the device mmengine picks (``mmengine.device.get_device``), before torch uses CUDA.

    mmengine has no device option: its runner moves the model to CUDA whenever CUDA is visible,
    so ``--device cpu`` hides the GPUs from this process (``CUDA_VISIBLE_DEVICES=''``).

    Raises:
        InputError: ``--device cuda`` without a visible CUDA device; ``--amp bf16|fp16`` on CPU;
            ``--device cpu`` after this process already initialised CUDA.
    """
    device, amp = getattr(args, 'device', None), getattr(args, 'amp', None)
    if device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
    if device is None and amp in (None, 'none'):
        return
    import torch

    if device == 'cpu' and torch.cuda.is_initialized():
        raise InputError('--device cpu: this process already uses CUDA; start it with CUDA_VISIBLE_DEVICES= instead')
    has_cuda = torch.cuda.is_available()
    if device == 'cuda' and not has_cuda:
        raise InputError('--device cuda: no CUDA device is visible to torch '
                         f'(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu')
    if amp in AMP_DTYPES and not has_cuda:
        raise InputError(f"--amp {amp} needs a CUDA device (mmengine's AmpOptimWrapper trains on GPUs only); "
                         'give --amp none or leave it out on CPU')
    if amp == 'bf16' and not torch.cuda.is_bf16_supported():
        raise InputError('--amp bf16: this GPU has no bfloat16 support; use --amp fp16')


def apply_amp(cfg, args) -> None:
    """``--amp``: the config's ``optim_wrapper`` as mmengine's ``AmpOptimWrapper`` (or plain ``OptimWrapper``).

    The SSPS hook reads the dynamic loss scale every step and unscales the logit and score
    gradients by it (``ssps_nni/mmengine/optim.py``); its own loss term is computed in fp32.
    """
    amp = getattr(args, 'amp', None)
    if amp is None:
        return
    wrapper = dict(cfg.get('optim_wrapper', None) or {})
    for key in ('dtype', 'loss_scale'):
        wrapper.pop(key, None)
    if amp == 'none':
        wrapper['type'] = 'OptimWrapper'
    else:
        wrapper.update(type='AmpOptimWrapper', dtype=AMP_DTYPES[amp], loss_scale='dynamic')
    cfg.optim_wrapper = wrapper


# -- output locations ------------------------------------------------------------------------------

def _mib(n: int) -> str:
    return f'{n / 2**20:.1f} MiB'


def output_problem(folder, min_free: int = MIN_FREE_BYTES) -> str | None:
    """Why files cannot be written into ``folder`` (created if missing), or None.

    Nothing is created: the nearest existing folder on the path is checked (write and search
    permission, ``os.access``; free space, ``shutil.disk_usage``).

    Args:
        folder: the output folder (relative to the working directory).
        min_free: bytes that must be free on its file system.
    """
    probe = osp.abspath(osp.expanduser(str(folder)))
    while not osp.lexists(probe):  # the nearest existing part of the path
        probe = osp.dirname(probe)
    if not osp.isdir(probe):
        what = 'a broken link' if osp.islink(probe) else 'a file'
        return f'{probe} is not a folder but {what}'
    if not os.access(probe, os.W_OK | os.X_OK):
        return f'no permission to write in {probe}'
    free = shutil.disk_usage(probe).free
    if free < min_free:
        return f'no space: {_mib(free)} free on the file system of {probe}, at least {_mib(min_free)} needed'
    return None


def check_output_dir(path, option: str, min_free: int = MIN_FREE_BYTES) -> None:
    """``path`` is a folder this process can create or write into, on a file system with room;
    checked before anything runs, so a refused run writes nothing (:func:`output_problem`).

    Args:
        path: the output folder.
        option: the option that set it, for the message (e.g. ``'--work-dir'``).
        min_free: bytes that must be free on its file system.

    Raises:
        InputError: one line naming the path and why it cannot be written: not a folder (a
            file on the path), no permission, or no space.
    """
    problem = output_problem(path, min_free)
    if problem:
        raise InputError(f'{option} {path} cannot be written: {problem}; give a folder you can write to, '
                         'on a disk with room (it is created if missing)')


def check_output_file(path, option: str, min_free: int = MIN_FREE_FILES) -> None:
    """``path`` is a file this process can write (atomically: a new file in its folder, renamed).

    Raises:
        InputError: the path is a folder, or its folder cannot be written (:func:`output_problem`).
    """
    if osp.isdir(str(path)):
        problem = 'it is a folder'
    else:
        problem = output_problem(osp.dirname(osp.abspath(osp.expanduser(str(path)))), min_free)
    if problem:
        raise InputError(f'{option} {path} cannot be written: {problem}; give a file name in a folder you can '
                         'write to, on a disk with room')


def work_dir_room(load_from=None) -> int:
    """Free bytes a training run's work dir needs: :data:`MIN_FREE_BYTES`, or four times the
    starting checkpoint (weights, optimizer state and the search state of two checkpoints)."""
    try:
        size = os.path.getsize(load_from) if load_from else 0
    except OSError:
        size = 0
    return max(MIN_FREE_BYTES, 4 * size)
