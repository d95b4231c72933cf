"""Every shipped grid names its paper figure in suite/grids.json, and reports label their figures with it."""

from __future__ import annotations

import pytest

from analysis import report
from suite.grids import get_grid, grid_names


@pytest.mark.parametrize("name", grid_names())
def test_every_shipped_grid_names_its_paper_figure(name):
    label = report.paper_figure(name)
    assert label == get_grid(name).figure and label.strip()
    if len(get_grid(name).variants) > 1:  # an ablation: its per-game figure is titled with this label
        assert label.startswith(("Figure ", "Runtime comparison")), label


def test_the_variants_no_keyword_matched_get_their_figures():
    assert report.paper_figure("ablation-policy-input-zh").startswith("Figure 17")
    assert report.paper_figure("ablation-fewer-interactions").startswith("Figure 18")
    assert report.paper_figure("ablation-vanilla-transformer").startswith("Runtime comparison, Appendix A.1")
    assert report.paper_figure("my-experiment").startswith("ablation (experiment 'my-experiment'")
