"""``python -m servletsession``: the command-line tool (see ``servletsession.cli``)."""

import sys

from .cli import main

sys.exit(main())
