"""``python -m kommo_callerid``: the same as the ``kommo-callerid`` command."""

import sys

from .cli import main

sys.exit(main())
