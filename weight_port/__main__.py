"""``python -m weight_port``: see :mod:`weight_port.cli`."""

import sys

from .cli import main

sys.exit(main())
