"""``python -m unikernel``: the unix target's command line (see cli.py)."""
import sys

from unikernel.cli import main

sys.exit(main())
