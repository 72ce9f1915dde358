"""``python -m cds``: the ``cds`` command."""

import sys

from .cli import main

sys.exit(main())
