"""``python -m examples.recipe_import``: the main job (see :mod:`.job`)."""

from __future__ import annotations

import sys

from .job import main

sys.exit(main())
