"""``python -m fedkd``: the ``fedkd`` command (see :mod:`fedkd.cli`)."""

import sys

from fedkd.cli import main

sys.exit(main())
