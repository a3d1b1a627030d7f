"""`python -m smolchat chat|ask ...`: see cli.py."""

import sys

from .cli import main

sys.exit(main())
