"""Tables as a paper prints them: Table 1's own rows, LaTeX that pdflatex takes, Markdown with the paper's label."""

from __future__ import annotations

import re

import pandas as pd

from analysis import ATARI_100K_GAMES, paper, tables
from analysis.stats import Interval


def _ours() -> pd.DataFrame:
    """One synthetic run per game at the paper's TWM score (a tidy final-score table)."""
    t1 = paper.table1()
    return pd.DataFrame({"method": "ours", "variant": "base", "game": list(ATARI_100K_GAMES), "seed": 0,
                         "env_step": 100_000, "score": t1["TWM"].to_numpy(), "hns": 0.0})


def test_table1_prints_the_papers_own_normalised_rows():
    table = tables.table1({"Ours": _ours()})
    assert table.frame.loc["Normalized Median", "DrQ(ε)"] == "0.313"  # recomputed from rounded means: 0.312
    for column, name in paper.TABLE1_METHODS.items():
        assert table.frame.loc["Normalized Mean", name] == f"{paper.table1_aggregates().loc['mean', column]:.3f}"
    assert table.frame.loc["Normalized Mean", "Ours"] == "0.956"  # ours is computed from its runs


def test_latex_is_a_wide_booktabs_table_without_a_duplicate_label_and_with_math_symbols():
    table = tables.table1({"Ours": _ours()})
    tex = table.to_latex("table1")
    assert tex.isascii()
    assert r"\begin{table*}" in tex and r"\end{table*}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\caption{Mean scores per game" in tex and "Table 1:" not in tex and r"\label{tab:table1}" in tex
    assert r"DrQ($\varepsilon$)" in tex
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 1 + 26 + 2 and len({row.count("&") for row in rows}) == 1
    assert table.to_markdown().startswith("**Table 1: Mean scores per game")
    agg = tables.aggregate_table({"TWM": {m: Interval(0.5, 0.4, 0.6) for m in ("median", "iqm", "mean",
                                                                              "optimality_gap")}},
                                 {"TWM": 5}, {"TWM": 8})
    agg_tex = agg.to_latex()
    assert r"Games $\geq$ human" in agg_tex and "0.500 (0.400--0.600)" in agg_tex and agg_tex.isascii()


def test_latex_escapes_every_special_character():
    text = tables.latex_escape("a_b 50% & #1 $x {y} ~ ^ ≥ ≤ – Γ τ ℓ ×")
    assert text.isascii()
    assert not re.search(r"(?<!\\)[_%&#{}]", text.replace(r"\textasciitilde{}", "").replace(
        r"\textasciicircum{}", "").replace("$", "").replace(r"\{", "").replace(r"\}", ""))
