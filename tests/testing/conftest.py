"""The sample user project under ``sample/`` is run as a project of its own
(``test_sample_project.py``), never collected as part of this suite."""

from __future__ import annotations

collect_ignore = ["sample"]
