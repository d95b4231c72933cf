"""Shared fixtures: the score ledger shipped in the package and the reference transcriptions under tests/."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import baselines


@pytest.fixture(scope="session")
def published() -> Path:
    """The package's score ledger folder (analysis/ledger): the published per-run score files."""
    return baselines.LEDGER_DIR


@pytest.fixture(scope="session")
def reference_tables() -> Path:
    """tests/analysis/data: independent transcriptions of the paper's Table 1 and Table 2."""
    return Path(__file__).with_name("data")
