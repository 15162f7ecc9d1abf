"""``ssps search``: a mixed-precision quantization policy for an mmengine config (the main job).

    ssps search                       # ResNet-20 on the shipped real CIFAR-10 subset
    ssps search CONFIG [--budget bitops=W4A4] [--candidates 2,3,4,6,8]
        [--work-dir DIR] [--resume] [--seed N] [--load-from PTH] [--cfg-options KEY=VALUE ...]
        [--lut FILE] [--method ssps|sensitivity|random] [--sensitivity-batches N]
        [--scores fisher|measured|calibrated|adapted] [--device cpu|cuda] [--amp none|bf16|fp16]

Built on mmengine's ``Config`` and ``Runner`` like mmpretrain's ``tools/train.py``; the search
itself is the config's ``SSPSHook`` (added with defaults when the config has none). Inputs are
checked before the runner is built, the cheap ones before torch and mmengine are imported, and
an unreachable budget from the model's layer profile (``ssps_nni.cli.cost_check``, cached); bad
input exits with status 2 and one ``ssps search: error:`` line, no traceback and no
``policy.json`` (a search whose loss became NaN/inf exits with status 3). At the end it prints
the policy table, its cost, the target and the reference costs (FP32, W8A8, all-minimum,
all-maximum).

``--budget`` is parsed once, into the typed config of the hook's options
(:func:`ssps_nni.cli.hook_config.search_config`); the early check and the run take that object
(the runner's ``SSPSHook`` through :func:`ssps_nni.driver_config.shared`). The parts: the options
and the run's mmengine config (:mod:`~ssps_nni.cli.search_args`), the hook entry and the typed
config (:mod:`~ssps_nni.cli.hook_config`), the reachability check
(:mod:`~ssps_nni.cli.cost_check`), the one-shot methods (:mod:`~ssps_nni.cli.methods`), what is
printed (:mod:`~ssps_nni.cli.search_result`).

The search ends right after the step of its last decision (docs/algorithm.md §6): a config's
default epoch loop is replaced by ``SSPSEpochBasedTrainLoop`` (:mod:`ssps_nni.cli.train_loop`),
which stops mid-epoch; the checkpoint of that step (``iter_N.pth``) is the one ``ssps train
--policy WORK_DIR`` continues from.

Exit status: 0 done (``WORK_DIR/policy.json`` written), 2 bad input (also: the work dir cannot
be written, or another run holds it, ``ssps_nni.cli.lock``), 3 a diverged search, 130 interrupted
(Ctrl-C, SIGINT), 143 stopped by SIGTERM. Faults and resuming:

- While it runs, the search keeps its snapshot in ``policy.partial.json`` (``"final": false``),
  which ``ssps train`` and ``ssps export`` refuse without ``--allow-partial``; ``policy.json``
  appears only when the search is done.
- Ctrl-C (SIGINT) or SIGTERM (a scheduler's pre-emption): the current step finishes, a checkpoint
  of that iteration is saved, the partial policy written, one line says the step reached and how
  to resume, and the exit status is 130 / 143 (:class:`ssps_nni.cli.stop.GracefulStop`; a second
  signal stops at once, after a checkpoint save in progress, so the checkpoint and
  ``last_checkpoint`` are whole). ``--resume`` continues at the next iteration, mid-epoch too.
- ``--resume`` continues from the checkpoint that the work dir's ``last_checkpoint`` names.
  A truncated or unreadable one (a kill during its save) is detected first: the newest readable
  ``epoch_N.pth`` / ``iter_N.pth`` before it is taken instead, with a warning, or the run is
  refused (exit 2) with a message naming the file (:func:`ssps_nni.cli.resume.resume_from`).
  Another ``--budget`` or other ``--candidates`` than the checkpoint's search was searched with
  are refused too (exit 2, :func:`ssps_nni.cli.resume.check_resume`).

``--method`` picks how the policy is found (the same ``WORK_DIR/policy.json`` either way, so
``ssps train --policy`` and ``ssps export`` take it unchanged):

``ssps`` (default)
    the SSPS search: the config's training run with its ``SSPSHook``.
``sensitivity``
    no training: the model (``load_from`` if set) is converted and calibrated as the search
    would (same layers, candidates and budget: the config's ``SSPSHook`` options), each
    layer's sensitivity to its bit-widths is measured on ``--sensitivity-batches`` training
    batches, and the policy that fills the budget by sensitivity is taken
    (``ssps_nni.sensitivity``, docs/algorithm.md §10).
``random``
    the same set-up, then a random policy within the budget (``--seed``).
"""
from __future__ import annotations

import sys

from ..errors import SSPSError
from .common import InputError, fail
from .cost_check import check_budget_reachable
from .hook_config import build_hook, hook_options, search_config
from .lock import work_dir_lock
from .methods import run_random, run_sensitivity
from .resume import check_resume
# parse_args, check_args, build_config, check_inputs: also ssps sweep's (search_cli.*) and the tests'
from .search_args import PROG, build_config, check_args, check_inputs, parse_args
from .search_result import explained, interrupted_message, print_result
from .stop import GracefulStop


def validate(cfg):
    """Check the SSPS options, data paths and ``load_from`` before building the runner.

    Returns:
        The typed :func:`~ssps_nni.cli.hook_config.search_config` (built once; the hook options
        are checked on it).

    Raises:
        InputError: with a one-paragraph message naming what is accepted.
    """
    config = search_config(cfg)
    build_hook(cfg, config)
    check_inputs(cfg)
    return config


# -- methods -------------------------------------------------------------------------------------

def run_ssps(cfg, args) -> None:
    """The SSPS search: the config's training run; its ``SSPSHook`` writes the policy.

    The runner is kept as ``args.runner`` (for :func:`interrupted_message`); SIGINT and SIGTERM
    stop it at the end of a step with a checkpoint of that iteration (``args.stop``,
    :class:`ssps_nni.cli.stop.GracefulStop`).
    """
    from mmengine.runner import Runner

    runner = Runner.from_cfg(cfg)
    args.runner = runner
    if getattr(args, 'stop', None) is not None:
        args.stop.attach(runner)
    runner.train()


RUNS = {'ssps': run_ssps, 'sensitivity': run_sensitivity, 'random': run_random}


def main(argv=None, prog: str = PROG) -> int:
    """Run ``ssps search``; returns the exit status.

    Returns:
        0 done, 2 bad input (one ``ssps search: error:`` line), 3 a diverged search,
        130 interrupted (Ctrl-C; one ``ssps search: interrupted ...`` line naming the step and
        how to resume).
    """
    args = parse_args(argv, prog)
    cfg = None
    try:
        # cheapest first: the training stack (mmpretrain, mmdet, the runner) is imported only
        # once the options, the paths and the budget have passed
        check_args(args)
        cfg = build_config(args)
        # the one parse of --budget in this process: the typed config of the hook's options
        # (ssps_nni.driver_config.driver_config); every hook of this run takes this object
        config = search_config(cfg)
        check_inputs(cfg)
        warn = lambda text: print(f'{prog}: warning: {text}', file=sys.stderr)  # noqa: E731
        check_resume(cfg, args, warn=warn, config=config)
        check_budget_reachable(cfg, config, warn=warn)
        build_hook(cfg, config)  # the hook's own options (calib_batches, ...), checked before the runner
        from ssps_nni.driver_config import shared

        # the runner builds its SSPSHook from the config dict (mmengine dumps it as text, so no object
        # travels in it): shared() hands it this config for the same options instead of a new parse
        with work_dir_lock(cfg.work_dir, prog), GracefulStop(prog) as args.stop, shared(config, hook_options(cfg)):
            RUNS[args.method](cfg, args)
    except (InputError, SSPSError) as err:
        return fail(prog, explained(err))
    except KeyboardInterrupt as err:  # also stop.Interrupted: SIGINT or SIGTERM
        if cfg is None:
            print(f'{prog}: interrupted before the search started; nothing was written', file=sys.stderr)
        else:
            print(f'{prog}: {interrupted_message(cfg, args, err)}', file=sys.stderr)
        return int(getattr(err, 'exit_status', 130))
    print_result(cfg.work_dir)
    return 0
