"""The command line's bad input, one table: ``ssps search``, ``ssps train``, ``ssps export`` and ``ssps report``.

Every case calls the command's ``main(argv)`` in-process (each stops before training) and asserts
exit status 2, one ``ssps CMD: error:`` line on stderr that names the problem and what is
accepted, no traceback, and nothing written in the work dir (for ``export``: no output file).
argparse's own refusals (``SystemExit(2)``, its usage and one error line) are in the table too.
The real command line's form (a fresh interpreter, the console script) is checked in
``tests/test_cli.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmpretrain')

import ssps_nni.mmengine  # noqa: E402,F401  (registries, torch safe globals)
from ssps_nni.mmengine.qat import QuantPolicyHook, build_model_from_cfg  # noqa: E402

from mm_search_helpers import ROOT  # noqa: E402

FULL_CONFIG = ROOT / 'mmdet_configs' / 'cifar10_resnet20_ssps.py'


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


class Inputs:
    """Files the cases point at, made in the test's ``tmp_path`` (not in the work dir)."""

    def __init__(self, tmp_path: Path, tiny_config: Path):
        self.tmp, self.config = tmp_path, str(tiny_config)
        self.work = tmp_path / 'work'

    def mm_policy(self, edit=None, name='policy.json') -> str:
        """A policy of the tiny config's model (uniform W4A4 resolved), changed by ``edit(dict)``."""
        from mmengine.config import Config

        data = QuantPolicyHook(uniform='W4A4').resolve(build_model_from_cfg(Config.fromfile(self.config))).to_dict()
        if edit:
            edit(data)
        return _write(self.tmp / name, json.dumps(data))

    def partial_policy(self) -> str:
        """A search's interim snapshot: final false, decisions open, 2.47x its budget."""
        def edit(data):
            data.update(final=False, open=['backbone.layer1.0.conv1'], num_decided=14, num_decisions=36, step=120,
                        budgets=[{'cost': 'bitops', 'spec': 'bitops=W4A4', 'target': 1.0}],
                        totals={'bitops': {'policy': 2.47, 'target': 1.0}})
        return self.mm_policy(edit, 'policy.partial.json')

    def plain_policy(self, final: bool = True) -> str:
        """A policy of the plain ``ssps_nni.models.resnet20`` (the export's ``--model``)."""
        from ssps_nni.models import resnet20

        data = QuantPolicyHook(uniform='W4A4').resolve(resnet20()).to_dict()
        if not final:
            data.update(final=False, num_decided=3, num_decisions=36)
        return _write(self.tmp / ('plain.json' if final else 'plain.partial.json'), json.dumps(data))

    def float_checkpoint(self) -> str:
        from ssps_nni.models import resnet20

        path = self.tmp / 'float.pth'
        torch.save(resnet20().state_dict(), path)
        return str(path)

    def truncated_checkpoint(self, path: Path) -> str:
        """A checkpoint cut in half (what a kill during its save leaves)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({'state_dict': {'w': torch.zeros(1000)}, 'meta': {}}, path)
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        return str(path)

    def last_checkpoint(self, target: str) -> None:
        """The work dir of an interrupted search whose ``last_checkpoint`` names ``target``."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / 'last_checkpoint').write_text(target)

    def text(self, name: str, text: str) -> str:
        return _write(self.tmp / name, text)

    def hold_lock(self, command: str = 'ssps search') -> list:
        """The work dir held by another run (a lock of this process, kept until the test ends)."""
        from ssps_nni.cli.lock import WorkDirLock

        self.lock = WorkDirLock(self.work, command).acquire()
        return []

    def whole_checkpoint(self) -> str:
        """A whole checkpoint in the work dir that ``last_checkpoint`` names (a resumable search)."""
        self.work.mkdir(parents=True, exist_ok=True)
        path = _save(self.work / 'epoch_1.pth', {'state_dict': {'w': torch.zeros(4)}, 'meta': {}, 'ssps': {'step': 1}})
        self.last_checkpoint(path)
        return path

    def retraining_checkpoint(self) -> list:
        """A whole checkpoint with no search state (``ssps train`` in the same work dir) as the latest."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.last_checkpoint(_save(self.work / 'epoch_6.pth', {'state_dict': {'w': torch.zeros(4)}, 'meta': {}}))
        return ['--resume']

    def tensor(self, name: str, shape) -> str:
        return _save(self.tmp / name, torch.randn(*shape))

    def folder(self, name: str = 'empty') -> str:
        (self.tmp / name).mkdir(exist_ok=True)
        return str(self.tmp / name)

    def mm_checkpoint(self) -> str:
        """A float checkpoint of the tiny config's model (mmengine names)."""
        from mmengine.config import Config

        return _save(self.tmp / 'mm_float.pth',
                     {'state_dict': build_model_from_cfg(Config.fromfile(self.config)).state_dict()})

    def export(self, *args, policy=None, checkpoint=None) -> list:
        """``ssps export`` arguments; outputs in the work dir, which must stay absent."""
        return ['--policy', policy or self.plain_policy(), '--checkpoint', checkpoint or self.float_checkpoint(),
                '--output', str(self.work / 'model.onnx'), '--nni-config', str(self.work / 'config_list.json'),
                *args]


def _drop_last(data):
    data['layers'].pop('backbone.layer3.2.conv2')


def _add_extra(data):
    data['layers']['backbone.extra'] = {'w_bits': 8, 'a_bits': 8, 'pinned': True}


def _bits_33(data):
    data['layers']['backbone.layer1.0.conv1']['a_bits'] = 33


def _w_bits_1(data):
    data['layers']['backbone.conv1']['w_bits'] = 1


def _lut_path(path):
    return ['--budget', 'lut=3.5', '--cfg-options', f'custom_hooks.0.cost_options.lut.path={path}']


def _in_use(i, *args):
    i.hold_lock()
    return list(args)


def _resume_in_use(i):
    i.whole_checkpoint()
    i.hold_lock()
    return ['--resume']


#: id -> (command, argv builder(Inputs) without CONFIG/--work-dir, the problem, what is accepted)
CASES = {
    # -- ssps search: budgets
    'search: budget malformed': ('search', lambda i: ['--budget', 'bitops=W4'], "malformed budget 'bitops=W4'",
                                 'accepted forms'),
    'search: budget W4A4A4': ('search', lambda i: ['--budget', 'bitops=W4A4A4'], 'malformed budget', 'accepted forms'),
    'search: budget unknown cost': ('search', lambda i: ['--budget', 'latency=3ms'], "unknown cost 'latency'",
                                    'accepted: bitops, size, bitfusion, lut'),
    'search: budget unknown cost foo': ('search', lambda i: ['--budget', 'foo=3'], "unknown cost 'foo'", 'accepted'),
    'search: budget unreachable': ('search', lambda i: ['--budget', 'bitops=1000'], 'unreachable',
                                   'Reachable range'),
    # -- ssps search: candidates
    'search: candidates not integers': ('search', lambda i: ['--candidates', '2,x,8'], 'is not a list of bit-widths',
                                        'comma-separated integer bit-widths, e.g. 2,3,4,6,8: weights in 2..32'),
    'search: candidates 40': ('search', lambda i: ['--candidates', '2,40'], 'weight candidate 40',
                              'is not an integer in 2..32'),
    'search: candidates 1': ('search', lambda i: ['--candidates', '1,2,4'], 'weight candidate 1 is below 2',
                             'accepted: integers 2..32'),
    'search: candidates empty': ('search', lambda i: ['--candidates', ''], 'weight candidate list is empty',
                                 'give bit-widths in 2..32'),
    # -- ssps search: configs, hook options, data
    'search: config missing': ('search', lambda i: [str(i.tmp / 'no_such_config.py')], 'does not exist',
                               'give a path to an mmengine config'),
    'search: misspelt hook option': ('search', lambda i: ['--cfg-options', 'custom_hooks.0.warmup_stepz=3'],
                                     "unknown SSPS option(s) ['warmup_stepz']", 'accepted: a_candidates'),
    'search: hook step count not a number': ('search', lambda i: ['--cfg-options', 'custom_hooks.0.total_steps=abc'],
                                             "total_steps must be a whole number of optimizer steps", "got 'abc'"),
    'search: archive missing': ('search', lambda i: ['--cfg-options',
                                                     'train_dataloader.dataset.archive=/no/such/subset.tar.gz'],
                                "'/no/such/subset.tar.gz' does not exist", '--cfg-options train_dataloader'),
    'search: data_root missing': ('search', lambda i: [str(FULL_CONFIG), '--cfg-options',
                                                       'train_dataloader.dataset.data_root=/no/such/cifar10'],
                                  "data_root = '/no/such/cifar10' does not exist",
                                  'Set it to your local copy with --cfg-options'),
    'search: hook seed not an integer': ('search', lambda i: ['--cfg-options', 'custom_hooks.0.seed=abc'],
                                         "seed must be an integer, got 'abc'", 'invalid SSPS option'),
    'search: hook tau_min negative': ('search', lambda i: ['--cfg-options', 'custom_hooks.0.tau_min=-1.0'],
                                      'need 0 < tau_min <= tau_max', 'tau_max=5.0'),
    'search: --cfg-options not KEY=VALUE': ('search', lambda i: ['--cfg-options', 'foo'],
                                            "'foo' is not KEY=VALUE", 'e.g. train_cfg.max_epochs=2'),
    'search: --cfg-options index past the list': ('search', lambda i: ['--cfg-options',
                                                                       'custom_hooks.3.budget=bitops=W3A3'],
                                                  '--cfg-options: Index 3 exceeds the length of list', 'SSPSHook'),
    # -- ssps search: LUT files
    'search: LUT not given': ('search', lambda i: ['--budget', 'lut=3.5'], "the 'lut' cost needs a JSON table",
                              "cost_options={'lut': {'path': 'lut.json'}}"),
    'search: LUT missing': ('search', lambda i: _lut_path(i.tmp / 'no_lut.json'), 'cannot read LUT file',
                            'a LUT is a JSON object'),
    'search: LUT not JSON': ('search', lambda i: _lut_path(i.text('lut.json', '{"layers": ')),
                             'cannot read LUT file', 'a LUT is a JSON object'),
    'search: LUT a list': ('search', lambda i: _lut_path(i.text('lut.json', '[1, 2]')),
                           'a LUT must be a JSON object', "'layers' and/or 'signatures' tables"),
    # -- ssps search: nested options and --lut
    'search: cost_options a string': ('search', lambda i: ['--budget', 'lut=3.5', '--cfg-options',
                                                           "custom_hooks.0.cost_options={'lut': {'path': 'l.json'}}"],
                                      'cost_options must be a mapping {cost: {option: value}}',
                                      'give --lut FILE, or one key per option'),
    'search: cost_options.lut a string': ('search', lambda i: ['--budget', 'lut=3.5', '--cfg-options',
                                                               'custom_hooks.0.cost_options.lut=l.json'],
                                          "cost_options['lut'] must be a mapping {option: value}",
                                          'custom_hooks.0.cost_options.lut.path=FILE'),
    'search: --lut missing': ('search', lambda i: ['--budget', 'lut=3.5', '--lut', str(i.tmp / 'no_lut.json')],
                              'cannot read LUT file', 'its path given by --lut FILE'),
    'search: --lut without a lut budget': ('search', lambda i: ['--lut', i.text('lut.json', '{"layers": {}}')],
                                           "cost_options for ['lut'] but no budget",
                                           'gives the table of a lut budget (--budget lut=VALUE)'),
    # -- ssps search / train: the work dir (checked before anything runs; one run at a time)
    'search: work dir under a file': ('search', lambda i: ['--work-dir', i.text('some_file', 'x') + '/wd'],
                                      'some_file is not a folder but a file', 'give a folder you can write to'),
    'search: work dir in use': ('search', lambda i: _in_use(i), 'is in use by another run: ssps search (pid',
                                'give another --work-dir'),
    'search: resume a work dir in use': ('search', _resume_in_use, 'is in use by another run: ssps search (pid',
                                         'wait for it to end'),
    'train: work dir is a file': ('train', lambda i: ['--uniform', 'W4A4', '--work-dir', i.text('file', 'x')],
                                  'file is not a folder but a file', 'give a folder you can write to'),
    'train: work dir in use': ('train', lambda i: _in_use(i, '--uniform', 'W4A4'),
                               'is in use by another run: ssps search (pid', 'give another --work-dir'),
    # -- ssps search: checkpoints
    'search: load-from missing': ('search', lambda i: ['--load-from', str(i.tmp / 'no.pth')], 'is not a local file',
                                  '--load-from PTH'),
    'search: load-from not a checkpoint': ('search', lambda i: ['--load-from', str(ROOT / 'README.md')],
                                           'is not a PyTorch checkpoint', '--load-from PTH'),
    'search: resume without checkpoint': ('search', lambda i: ['--resume'], 'found no checkpoint',
                                          'give the --work-dir of the interrupted run'),
    'search: resume truncated latest': ('search', lambda i: i.last_checkpoint(
        i.truncated_checkpoint(i.work / 'epoch_1.pth')) or ['--resume'], 'epoch_1.pth is not a PyTorch checkpoint',
        'leave out --resume to start a new search'),
    'search: resume a retraining checkpoint': ('search', lambda i: i.retraining_checkpoint(),
                                               'holds no SSPS search state', 'start a new search without --resume'),
    'search: resume latest missing': ('search', lambda i: i.last_checkpoint(str(i.work / 'epoch_3.pth'))
                                      or ['--resume'], 'epoch_3.pth is not a local file',
                                      'Give --load-from PTH with a whole checkpoint'),
    # -- ssps search: methods
    'search: sensitivity batches 0': ('search', lambda i: ['--method', 'sensitivity', '--sensitivity-batches', '0'],
                                      '--sensitivity-batches must be >= 1', 'training batches to measure on'),
    'search: sensitivity batches -3': ('search', lambda i: ['--method', 'sensitivity', '--sensitivity-batches', '-3'],
                                       '--sensitivity-batches must be >= 1', 'got -3'),
    'search: batches with random': ('search', lambda i: ['--method', 'random', '--sensitivity-batches', '4'],
                                    'used only by --method sensitivity', 'this run: --method random'),
    'search: batches without method': ('search', lambda i: ['--sensitivity-batches', '4'],
                                       'used only by --method sensitivity', 'this run: --method ssps'),
    'search: resume with random': ('search', lambda i: ['--method', 'random', '--resume'], 'nothing to resume',
                                   'leave out --resume'),
    'search: unknown method': ('search', lambda i: ['--method', 'foo'], "invalid choice: 'foo'",
                               "choose from 'ssps', 'sensitivity', 'random'"),
    'search: batches not an integer': ('search', lambda i: ['--method', 'sensitivity', '--sensitivity-batches', 'x'],
                                       "invalid int value: 'x'", '--sensitivity-batches N'),
    # -- ssps train: policies
    'train: policy missing layer': ('train', lambda i: ['--policy', i.mm_policy(_drop_last)],
                                    "model layer 'backbone.layer3.2.conv2' is missing from the policy",
                                    "a policy of this config's model"),
    'train: policy extra layer': ('train', lambda i: ['--policy', i.mm_policy(_add_extra)],
                                  "policy layer 'backbone.extra' is not a Conv2d/Linear",
                                  "a policy of this config's model"),
    'train: policy a_bits 33': ('train', lambda i: ['--policy', i.mm_policy(_bits_33)],
                                "layer 'backbone.layer1.0.conv1' has a_bits=33", 'accepted: integers 1..32'),
    'train: policy w_bits 1': ('train', lambda i: ['--policy', i.mm_policy(_w_bits_1)], "'backbone.conv1' has w_bits=1",
                               'weights need 2..32 bits'),
    'train: policy not JSON': ('train', lambda i: ['--policy', i.text('bad.json', '{"format": ')], 'is not valid JSON',
                               'the policy.json written by ssps search'),
    'train: policy unreadable': ('train', lambda i: ['--policy', str(i.tmp / 'none.json')], 'cannot read policy file',
                                 'the policy.json written by ssps search'),
    'train: policy not final': ('train', lambda i: ['--policy', i.partial_policy()],
                                'is not a final policy but a running search\'s snapshot: 14 of 36 decisions made',
                                'bitops 2.47x its budget bitops=W4A4. Finish the search (resume it in its work dir)'),
    'train: allow-partial with uniform': ('train', lambda i: ['--uniform', 'W4A4', '--allow-partial'],
                                          '--allow-partial applies to --policy', 'leave it out with --uniform'),
    'train: policy and uniform': ('train', lambda i: ['--policy', 'p.json', '--uniform', 'W4A4'],
                                  'argument --uniform: not allowed with argument --policy', 'usage:'),
    # -- ssps train: uniform, config, checkpoints
    'train: uniform W4': ('train', lambda i: ['--uniform', 'W4'], 'not of the form WxAy', 'accepted: WxAy'),
    'train: uniform W1A4': ('train', lambda i: ['--uniform', 'W1A4'], 'weights need 2..32 bits', "uniform='W1A4'"),
    'train: uniform W40A4': ('train', lambda i: ['--uniform', 'W40A4'], 'not an integer in 1..32', 'accepted: WxAy'),
    'train: config missing': ('train', lambda i: [str(i.tmp / 'no_such_config.py'), '--uniform', 'W4A4'],
                              'does not exist', 'give a path to an mmengine config'),
    'train: load-from missing': ('train', lambda i: ['--uniform', 'W4A4', '--load-from', str(i.tmp / 'no.pth')],
                                 'is not a local file', '--load-from PTH'),
    'train: load-from not a checkpoint': ('train', lambda i: ['--uniform', 'W4A4', '--load-from',
                                                              i.text('text.pth', 'not a checkpoint')],
                                          'is not a PyTorch checkpoint', '--load-from PTH'),
    'train: load-from truncated': ('train', lambda i: ['--uniform', 'W4A4', '--load-from',
                                                       i.truncated_checkpoint(i.tmp / 'cut.pth')],
                                   'is not a PyTorch checkpoint', 'torch.save writes a zip archive'),
    # -- ssps export
    'export: checkpoint missing': ('export', lambda i: i.export(checkpoint=str(i.tmp / 'nope.pth')),
                                   'checkpoint not found', 'give the .pth of the retrained model'),
    'export: checkpoint not torch': ('export', lambda i: i.export(checkpoint=i.text('t.pth', 'text')),
                                     'cannot load checkpoint', 'accepted: a torch.save file'),
    'export: checkpoint truncated': ('export', lambda i: i.export(checkpoint=i.truncated_checkpoint(i.tmp / 'c.pth')),
                                     'cannot load checkpoint', 'accepted: a torch.save file'),
    'export: checkpoint no tensors': ('export', lambda i: i.export(checkpoint=i.text('n.json', '') and _save(
        i.tmp / 'n.pth', {'epoch': 3})), 'holds no state_dict of tensors', "under 'state_dict' or 'model'"),
    'export: policy not JSON': ('export', lambda i: i.export(policy=i.text('p.json', '{')), 'not valid JSON',
                                'the policy.json written by ssps search'),
    'export: policy missing': ('export', lambda i: i.export(policy=str(i.tmp / 'none.json')),
                               'cannot read policy file', 'the policy.json written by ssps search'),
    'export: policy not final': ('export', lambda i: i.export(policy=i.plain_policy(final=False)),
                                 'is not a final policy', 'or pass --allow-partial to use it anyway'),
    'export: wrong model': ('export', lambda i: i.export('--model', 'resnet18'), 'is not a Conv2d/Linear of ResNet',
                            'give the policy searched for this model'),
    'export: unknown model': ('export', lambda i: i.export('--model', 'no_such_net'), "unknown model 'no_such_net'",
                              'a torchvision.models name'),
    'export: input shape': ('export', lambda i: i.export('--input-shape', '1x3x32x32'),
                            '--input-shape must be 4 comma-separated positive integers', 'N,C,H,W'),
    'export: input shape of 3 numbers': ('export', lambda i: i.export('--input-shape', '3,32,32'),
                                         '--input-shape must be 4 comma-separated positive integers', "'3,32,32'"),
    'export: output is a folder': ('export', lambda i: [*i.export()[:4], '--output', str(i.tmp)],
                                   'cannot be written: it is a folder', 'give a file name'),
    'export: output under a file': ('export', lambda i: [*i.export()[:4], '--output',
                                                         i.text('f.txt', 'x') + '/m.onnx'],
                                    'f.txt is not a folder but a file', 'give a file name in a folder you can write'),
    # -- ssps export: calibration data against the model's input
    'export: CIFAR subset for a 64x64 input': ('export', lambda i: i.export('--calibrate', '8', '--input-shape',
                                                                           '1,3,64,64'),
                                               'calibrates on the shipped CIFAR-10 subset (3x32x32 images), which '
                                               'does not fit the model input 3x64x64', '--calib-data FOLDER'),
    'export: calibration tensor of another shape': ('export', lambda i: i.export(
        '--calib-data', i.tensor('x16.pt', (8, 3, 16, 16)), '--input-shape', '1,3,32,32'),
        'holds inputs of 3x16x16 but the model input (--input-shape) is 3x32x32', "give inputs of the model's shape"),
    'export: calibration tensor not 4-d': ('export', lambda i: i.export('--calib-data', i.tensor('x2.pt', (8, 3))),
                                           'holds a 2-d torch.float32 tensor', 'a float tensor (N, C, H, W)'),
    'export: calibration tensor of NaN': ('export', lambda i: i.export(
        '--calib-data', _save(i.tmp / 'nan.pt', torch.full((8, 3, 32, 32), float('nan')))),
        'holds NaN or infinite values', 'give finite inputs'),
    'export: calibration data missing': ('export', lambda i: i.export('--calib-data', str(i.tmp / 'none')),
                                         'none does not exist', 'accepted: --calib-data FOLDER'),
    'export: calibration folder empty': ('export', lambda i: i.export('--calib-data', i.folder()), 'holds no image',
                                         '.jpg, .jpeg, .png'),
    'export: input channels': ('export', lambda i: i.export('--input-shape', '1,1,32,32', '--calibrate', '8'),
                               "has 1 channel(s) but the model's first convolution takes 3", 'N,3,H,W'),
    'export: mean without a folder': ('export', lambda i: i.export('--calibrate', '8', '--mean', '120'),
                                      '--mean/--std normalise the images of --calib-data FOLDER', 'leave them out'),
    'export: config data of another shape': ('export', lambda i: i.export(
        '--config', i.config, '--calibrate', '8', '--input-shape', '1,3,64,64', policy=i.mm_policy(),
        checkpoint=i.mm_checkpoint()), 'gives inputs of 3x32x32 but --input-shape is 3x64x64',
        'leave out --input-shape'),
    'export: calibration tensor of another shape than the config data': ('export', lambda i: i.export(
        '--config', i.config, '--calib-data', i.tensor('x64.pt', (8, 3, 64, 64)), policy=i.mm_policy(),
        checkpoint=i.mm_checkpoint()), 'holds inputs of 3x64x64 but the training data of --config',
        'gives inputs of 3x32x32; give inputs of that shape, or --input-shape 1,3,64,64'),
    'export: calibration tensor of other channels than the config data': ('export', lambda i: i.export(
        '--config', i.config, '--calib-data', i.tensor('x1.pt', (8, 1, 32, 32)), policy=i.mm_policy(),
        checkpoint=i.mm_checkpoint()), 'holds inputs of 1x32x32 but the training data of --config',
        'gives inputs of 3x32x32; give inputs of that shape'),
    # -- ssps report
    'report: out under a file': ('report', lambda i: [i.plain_policy(), '--out', i.text('r.txt', 'x') + '/report'],
                                 'r.txt is not a folder but a file', 'give a folder you can write to'),
    'export: config missing': ('export', lambda i: i.export('--config', str(i.tmp / 'none.py')), 'config not found',
                               'or --model NAME for a plain model'),
    'export: float needs calibration': ('export', lambda i: i.export(), 'the checkpoint has no step sizes',
                                        'or pass --calibrate N'),
    'export: opset too old': ('export', lambda i: i.export('--opset', '11', '--calibrate', '8'), 'opset 11 is too old',
                              'opset >= 13'),
}


def _save(path: Path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob('*')} if folder.exists() else None


@pytest.fixture(scope='module')
def tools():
    from ssps_nni.cli import export, report, search, train

    return {'search': search, 'train': train, 'export': export, 'report': report}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_exits_2_with_one_line(case, tools, tiny_config, tmp_path, capsys):
    command, build, problem, accepted = CASES[case]
    inputs = Inputs(tmp_path, tiny_config)
    args = build(inputs)
    if command in ('search', 'train'):
        config = [] if args and args[0].endswith('.py') else [inputs.config]
        args = [*config, *args] + ([] if '--work-dir' in args else ['--work-dir', str(inputs.work)])
    before = _files(inputs.work)
    capsys.readouterr()
    try:
        code = tools[command].main(args)
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
        usage = True
    else:
        usage = False
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'Traceback' not in err
    lines = err.splitlines()
    prefix = f'ssps {command}: error: '
    if usage:  # argparse: its usage, then one error line
        assert lines[0].startswith(f'usage: ssps {command}') and lines[-1].startswith(prefix), err
    else:
        mine = [line for line in lines if not line.startswith(f'ssps {command}: warning:')]
        assert len(mine) == 1 and mine[0].startswith(prefix), err
    assert problem in err, err
    assert accepted in err, err
    assert _files(inputs.work) == before, 'a refused command wrote into the work dir'
