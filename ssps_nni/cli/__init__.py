"""The command line of ssps-nni: the ``ssps`` console command (``ssps_nni.cli.main``).

One module per subcommand (``search``, ``train``, ``export``, ``report``, ``benchmark``), each
with ``main(argv=None, prog=...) -> exit status``; ``common`` holds what they share: the one
error type :class:`~ssps_nni.cli.common.InputError` (one ``PROG: error:`` line, exit status 2),
the repository paths and the argument vocabulary (config, budget, candidates, work dir, seed,
load-from, cfg-options). ``tools/*.py`` are two-line shims onto the same ``main`` functions.
"""
