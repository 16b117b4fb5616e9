"""``python -m cmidd.cli``: the same as the ``cmidd`` console script."""

import sys

from . import main

sys.exit(main())
