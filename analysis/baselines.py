"""The score ledger: published per-run Atari 100k scores shipped in `analysis/ledger/`, usable by name.

The files are kept byte for byte as published; `ledger/PROVENANCE.md` says where each one comes from
(repository, commit, path, sha256), what one number means, and where a file does not reproduce its paper's
headline. Entries are named by file stem (`TWM`, `STORM`, `DrQ_eps`, ...). Two files need a rule to become a
(runs x games) matrix, and both rules are applied here, nowhere else:

- `BBF.json` has 52-60 runs per game: the first 52 runs of each game are used (the file keeps the source
  CSV's seed order; PROVENANCE.md note 1 gives the aggregates of this choice).
- `CURL.json` is a list of already-normalised records: `analysis.scores.load_score_file` turns each `HNS`
  back into a raw score with the paper's random and human scores (PROVENANCE.md note 5).

Entries with one value per game (EfficientZero, MuZero) are per-game means, not runs: the analysis shows their
median and mean without intervals and leaves them out of run-level statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd

from analysis import AnalysisError
from analysis.scores import load_score_file

LEDGER_DIR = Path(__file__).with_name("ledger")
PROVENANCE = LEDGER_DIR / "PROVENANCE.md"
NORMALISERS = ("RANDOM", "HUMAN")  # normalisation constants, not methods
# What `twm-suite report` compares a grid with unless --baselines says otherwise: the paper's own scores,
# the world-model agents that followed it, and the paper's model-free and model-based baselines with runs.
DEFAULT_REPORT_BASELINES: tuple[str, ...] = ("TWM", "IRIS", "STORM", "DreamerV3", "DIAMOND", "REM", "SPR", "SimPLe")
PROVENANCE_COLUMNS = ("file", "method", "source", "runs", "score", "recomputed", "headline", "verdict")


@dataclass(frozen=True)
class Entry:
    """One ledger file and its row of PROVENANCE.md."""

    name: str  # the file stem: the name on the command line
    path: Path
    method: str  # who and where, as PROVENANCE.md names it
    source: str  # repository @ commit : path
    runs: str  # runs per game, as PROVENANCE.md says
    score: str  # what one number in the file is
    recomputed: str  # PROVENANCE.md's aggregates recomputed with rliable
    headline: str  # the paper's own headline numbers
    verdict: str  # whether the file reproduces the headline, and why not

    @property
    def run_counts(self) -> tuple[int, int]:
        """The fewest and the most runs of any game in the file (BBF: 52, 60)."""
        data = json.loads(self.path.read_text())
        if isinstance(data, list):
            counts = pd.Series([r["game"] for r in data]).value_counts()
            return int(counts.min()), int(counts.max())
        return min(len(v) for v in data.values()), max(len(v) for v in data.values())


def _provenance_rows() -> dict[str, dict[str, str]]:
    """PROVENANCE.md's table: file name -> its cells."""
    rows = {}
    for line in PROVENANCE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(PROVENANCE_COLUMNS) and cells[0].endswith(".json"):
            rows[cells[0]] = dict(zip(PROVENANCE_COLUMNS, cells, strict=True))
    return rows


@cache
def entries() -> dict[str, Entry]:
    """Every method of the ledger by name, in file-name order (the normalisers RANDOM and HUMAN excluded)."""
    rows = _provenance_rows()
    out = {}
    for path in sorted(LEDGER_DIR.glob("*.json"), key=lambda p: p.stem.lower()):
        if path.stem in NORMALISERS:
            continue
        row = rows.get(path.name)
        if row is None:
            raise AnalysisError(f"ledger file {path.name} has no row in {PROVENANCE}")
        out[path.stem] = Entry(path.stem, path, **{k: row[k] for k in PROVENANCE_COLUMNS[1:]})
    return out


def names() -> list[str]:
    """Ledger entry names."""
    return list(entries())


def get(name: str) -> Entry:
    """A ledger entry by exact name; the error lists the names."""
    try:
        return entries()[name]
    except KeyError:
        raise AnalysisError(f"'{name}' is not in the score ledger; entries: {', '.join(names())} "
                            "(a file or an experiment is given as NAME=PATH or NAME=mlflow:EXPERIMENT)") from None


def load(name: str) -> pd.DataFrame:
    """Tidy scores of a ledger entry (method = its name), with the runs rule of the module docstring."""
    entry = get(name)
    return load_score_file(entry.path, method=name, first_runs=entry.run_counts[0])


def sha256_listing() -> dict[str, str]:
    """The sha256 of each ledger file as PROVENANCE.md lists it (file name -> hex digest)."""
    text = PROVENANCE.read_text()
    block = text.split("sha256 of each file", 1)[1].split("```")[1]
    return {name: digest for digest, name in (line.split() for line in block.strip().splitlines())}
