"""``python -m dramatiq_shared.cli``: the ``dramatiq-shared`` command."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
