# The one line a project adds to use the kit (or: addopts = -p dramatiq_shared.testing).
from __future__ import annotations

pytest_plugins = ["dramatiq_shared.testing"]
