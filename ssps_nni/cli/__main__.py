"""``python -m ssps_nni.cli COMMAND ...``: the ``ssps`` console command without its entry point."""
import sys

from .main import main

sys.exit(main())
