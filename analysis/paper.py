"""The paper's numbers as data: Table 1 (random, human, per-game means) and Table 2 (TWM by interactions).

Read from `results/paper/*.csv`, typed from the paper text; random and human are the normalisation constants.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

from analysis import ATARI_100K_GAMES, AnalysisError

PAPER_DIR = Path(__file__).resolve().parents[1] / "results" / "paper"

# Column in table1.csv -> display name used in the paper.
TABLE1_METHODS: dict[str, str] = {
    "DER": "DER", "CURL": "CURL", "DrQ_eps": "DrQ(ε)", "SPR": "SPR", "SimPLe": "SimPLe", "TWM": "TWM",
}
# Column in table2.csv -> env step.
TABLE2_STEPS: dict[str, int] = {
    "TWM_5k": 5_000, "TWM_10k": 10_000, "TWM_25k": 25_000,
    "TWM_50k": 50_000, "TWM_75k": 75_000, "TWM_100k": 100_000,
}


def _read(name: str) -> pd.DataFrame:
    path = PAPER_DIR / name
    if not path.exists():
        raise AnalysisError(f"paper data file {path} is missing")
    return pd.read_csv(path).set_index("game")


@cache
def table1() -> pd.DataFrame:
    """Per-game rows of the paper's Table 1 (index: game; columns random, human, DER, ..., TWM)."""
    frame = _read("table1.csv")
    return frame.loc[list(ATARI_100K_GAMES)]


@cache
def table1_aggregates() -> pd.DataFrame:
    """The paper's 'Normalized Mean' and 'Normalized Median' rows of Table 1 (index: mean, median)."""
    frame = _read("table1.csv").loc[["Normalized_Mean", "Normalized_Median"]]
    frame.index = ["mean", "median"]
    return frame


@cache
def table2() -> pd.DataFrame:
    """Per-game rows of the paper's Table 2 (TWM at 5K ... 100K interactions beside SimPLe and SPR)."""
    return _read("table2.csv").loc[list(ATARI_100K_GAMES)]


@cache
def table2_normalized_mean() -> pd.Series:
    """The paper's 'Normalized Mean' row of Table 2."""
    return _read("table2.csv").loc["Normalized_Mean"]


def random_scores() -> pd.Series:
    """Random-agent score per game (paper Table 1)."""
    return table1()["random"]


def human_scores() -> pd.Series:
    """Human score per game (paper Table 1)."""
    return table1()["human"]
