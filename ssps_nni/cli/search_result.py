"""What ``ssps search`` prints: the result, the line of an interrupted run, and the hints added to errors.

Nothing here runs a search; the training stack is not imported (the policy module only).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CostOptionsError, LutError, LutMissingError, UnusedCostOptionsError
from .common import InputError


def partial_status(work_dir: str) -> str:
    """One phrase on what the work dir holds instead of a ``policy.json`` (the snapshot's status)."""
    from ssps_nni.errors import SSPSError as CoreError
    from ssps_nni.policy import PARTIAL_POLICY_JSON, load_policy

    path = Path(work_dir) / PARTIAL_POLICY_JSON
    if not path.is_file():
        return f'no {PARTIAL_POLICY_JSON} either (no decision made yet)'
    try:
        return f'its snapshot {path} is not final: {load_policy(path).status()}'
    except CoreError as err:
        return f'its snapshot {path} cannot be read ({err})'


def print_result(work_dir: str) -> bool:
    """The policy table, its cost vs the target and the reference costs.

    Returns:
        False (and one line on the partial snapshot instead) when the work dir holds no
        ``policy.json``: the search did not finish (interrupted, or stopped early on another rank).
    """
    from ssps_nni.cost_report import cost_lines
    from ssps_nni.policy import POLICY_JSON, load_policy

    path = Path(work_dir) / POLICY_JSON
    if not path.is_file():
        print(f'no {POLICY_JSON} in {work_dir}: the search did not finish; {partial_status(work_dir)}. '
              'Resume it with --resume.')
        return False
    policy = load_policy(path)
    print('\n' + policy.table())
    print()
    for line in cost_lines(policy):
        print(line)
    figure = path.with_suffix('.png')
    print(f'policy: {path}  figure: {figure if figure.is_file() else "none"}')
    return True


def interrupted_message(cfg, args, err=None) -> str:
    """The one line of an interrupted search: the step reached and how to resume.

    Args:
        err: the ``KeyboardInterrupt`` (a :class:`ssps_nni.cli.stop.Interrupted` names its signal).
    """
    runner = getattr(args, 'runner', None)
    signum = getattr(err, 'signum', None)
    what = 'interrupted' if signum in (None, 2) else f'stopped by {getattr(err, "args", ("a signal",))[0]}'
    if args.method != 'ssps':
        return f'{what}; --method {args.method} trains nothing and has nothing to resume: run it again'
    if runner is None:
        return f'{what} before the search started; nothing to resume (run the command again)'
    step = None
    for hook in getattr(runner, 'hooks', []):
        search = getattr(hook, 'search', None)
        if type(hook).__name__ == 'SSPSHook' and search is not None:
            step = f'step {search.step} of {search.config.total_steps}'
    iteration = getattr(err, 'iteration', None)
    where = f'{step or "the start"} (epoch {runner.epoch + 1}, iteration {runner.iter if iteration is None else iteration})'
    pointer = Path(cfg.work_dir) / 'last_checkpoint'
    last = pointer.read_text().strip() if pointer.is_file() else ''
    if not last:
        return (f'{what} at {where}, before the first checkpoint: nothing to resume; '
                f'run the command again without --resume ({cfg.work_dir} holds no policy.json)')
    return (f'{what} at {where}; resume with --resume (the same command and --work-dir {cfg.work_dir}, '
            f'from {last}); no policy.json was written, {partial_status(cfg.work_dir)}')


#: What a LUT file holds (ssps_nni.cost.LutCost), added to the core's LUT messages.
LUT_FORM = ("a JSON object {'unit': 'ms', 'layers': {LAYER: {'w4a4': COST, ...}}, 'signatures': "
            "{SIGNATURE: {'w4a4': COST, ...}}}, its path given by --lut FILE (the hook's "
            "cost_options={'lut': {'path': FILE}}, or --cfg-options custom_hooks.0.cost_options.lut.path=FILE)")
#: How the command line sets a nested hook option (``--cfg-options`` reads a ``{...}`` value as text).
NESTED_FORM = ("on the command line give --lut FILE, or one key per option: --cfg-options "
               "custom_hooks.0.cost_options.lut.path=FILE (--cfg-options reads a {...} value as text)")


def explained(err: BaseException) -> BaseException:
    """``err``, with how to give a LUT or ``cost_options`` added, chosen by the core error's type.

    ``err`` is the core's error or an :class:`InputError` wrapping it as its cause
    (``ssps_nni.cli.hook_config.invalid_option``); the message keeps the wrapper's text.
    """
    # bad input only: a diverged search (exit 3) keeps its own type and status
    if getattr(err, 'exit_status', 2) != 2:
        return err
    core = err.__cause__ if isinstance(err, InputError) and err.__cause__ is not None else err
    text = str(err)
    if isinstance(core, UnusedCostOptionsError):
        if core.costs == ['lut']:
            return InputError(f'{text}; --lut FILE gives the table of a lut budget (--budget lut=VALUE)')
        return err
    if isinstance(core, CostOptionsError):
        return InputError(f'{text}; {NESTED_FORM}')
    if isinstance(core, LutMissingError):
        return InputError(f'{text}; --lut FILE gives the table of a lut budget (--budget lut=VALUE)')
    if isinstance(core, LutError):
        return InputError(f'{text}; a LUT is {LUT_FORM}')
    return err
