"""Shared fixtures: the read-only reference folder beside the repo and a real MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]  # the repository
# ../shared/reference beside the repository (or shared/reference inside a checkout that carries it)
REFERENCE = next(
    (p for p in (_ROOT.parent / "shared" / "reference", _ROOT / "shared" / "reference") if p.is_dir()),
    _ROOT.parent / "shared" / "reference",
)


@pytest.fixture(scope="session")
def reference() -> Path:
    """../shared/reference (skips when the folder is not there)."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference folder {REFERENCE} is missing")
    return REFERENCE


@pytest.fixture(scope="session")
def published(reference: Path) -> Path:
    return reference / "published_scores"
