"""The paper's tables from tidy scores: Table 1, Table 2, aggregate and ablation tables; Markdown, CSV, LaTeX."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import ATARI_100K_GAMES, paper
from analysis.scores import final_scores, normalise
from analysis.stats import METRICS, Interval

METRIC_LABELS = {"median": "Median", "iqm": "IQM", "mean": "Mean", "optimality_gap": "Optimality gap"}
TABLE2_STEPS = list(paper.TABLE2_STEPS.values())


# Characters of our captions and cells that pdflatex does not take as they are.
LATEX_TEXT = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "ε": r"$\varepsilon$",
              "≥": r"$\geq$", "≤": r"$\leq$", "–": "--", "—": "---", "Γ": r"$\Gamma$", "τ": r"$\tau$",
              "×": r"$\times$", "ℓ": r"$\ell$", "’": "'", "`": ""}


def latex_escape(text: str) -> str:
    """Plain text -> pdflatex-safe text (special characters escaped, Greek letters and ≥ as math)."""
    return "".join(LATEX_TEXT.get(ch, ch) for ch in str(text))


@dataclass
class Table:
    """A table to publish: string cells, which cells are bold, a caption (and the paper's label, e.g. Table 1)."""

    frame: pd.DataFrame  # index = row labels, all cells already formatted as strings
    caption: str
    bold: pd.DataFrame | None = None  # same shape as frame, True where the cell is the best
    notes: list[str] = field(default_factory=list)
    label: str = ""  # e.g. "Table 1": printed before the caption in Markdown; LaTeX numbers tables itself

    def _cells(self, bold_fmt: str) -> pd.DataFrame:
        cells = self.frame.copy()
        if self.bold is not None:
            cells = cells.where(~self.bold, self.frame.map(lambda v: bold_fmt.format(v)))
        return cells

    def to_markdown(self) -> str:
        """GitHub Markdown with the best cells in **bold**."""
        cells = self._cells("**{}**")
        head = [self.frame.index.name or ""] + [str(c) for c in cells.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = zip(cells.index, cells.values, strict=True)
        lines += ["| " + " | ".join([str(i)] + list(row)) + " |" for i, row in rows]
        title = f"{self.label}: {self.caption}" if self.label else self.caption
        text = f"**{title}**\n\n" + "\n".join(lines) + "\n"
        return text + "".join(f"\n{n}\n" for n in self.notes)

    def to_latex(self, stem: str = "") -> str:
        """A page-wide booktabs table (`table*`) that pdflatex compiles; needs \\usepackage{booktabs,graphicx}.

        Shrunk to the text width only when wider; the caption has no "Table N:" (LaTeX numbers the table);
        the best cells are \\textbf."""
        cells = self.frame.map(latex_escape)
        if self.bold is not None:
            cells = cells.where(~self.bold, cells.map(lambda v: rf"\textbf{{{v}}}"))
        head = [latex_escape(self.frame.index.name or "")] + [latex_escape(c) for c in cells.columns]
        rows = zip(cells.index, cells.values, strict=True)
        body = [" & ".join([latex_escape(i)] + list(row)) + r" \\" for i, row in rows]
        notes = [latex_escape(n) for n in self.notes]
        return "\n".join(
            ["% needs \\usepackage{booktabs,graphicx}", r"\begin{table*}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(self.caption)}}}", *([rf"\label{{tab:{stem}}}"] if stem else []),
             r"\setlength{\tabcolsep}{4pt}", r"\resizebox{\ifdim\width>\textwidth\textwidth\else\width\fi}{!}{%",
             r"\begin{tabular}{l" + "r" * len(cells.columns) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}}",
             *([r"\par\smallskip\footnotesize " + " ".join(notes)] if notes else []), r"\end{table*}", ""]
        )

    def write(self, out_dir: Path, stem: str) -> list[Path]:
        """Write `stem`.md, .csv and .tex into `out_dir`; return the paths."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex")]
        paths[0].write_text(self.to_markdown())
        self.frame.to_csv(paths[1])
        paths[2].write_text(self.to_latex(stem))
        return paths


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def per_game_means(tidy: pd.DataFrame) -> pd.Series:
    """Mean final score over runs for each game (index: game)."""
    return final_scores(tidy).groupby("game")["score"].mean()


def _normalised_rows(means: pd.DataFrame) -> pd.DataFrame:
    """'Normalized Mean' / 'Normalized Median' of per-game mean scores (NaN where a game is missing)."""
    hns = means.apply(lambda col: pd.Series(normalise(col.to_numpy(), col.index.to_numpy()), index=col.index))
    complete = hns.notna().all()
    mean = hns.mean().where(complete)
    median = hns.median().where(complete)
    return pd.DataFrame([mean, median], index=["Normalized Mean", "Normalized Median"])


def table1(ours: dict[str, pd.DataFrame]) -> Table:
    """Paper Table 1 layout: per-game means of the paper's methods with our runs beside them, best in bold.

    The paper's columns print the paper's own normalised mean and median rows (recomputing them from its
    rounded per-game means would differ in the third decimal, e.g. DrQ(ε) median 0.312 vs 0.313)."""
    ref = paper.table1()
    means = pd.DataFrame({paper.TABLE1_METHODS[c]: ref[c] for c in paper.TABLE1_METHODS})
    for label, tidy in ours.items():
        means[label] = per_game_means(tidy).reindex(list(ATARI_100K_GAMES))
    norm = _normalised_rows(means)
    printed = paper.table1_aggregates()
    for column, name in paper.TABLE1_METHODS.items():
        norm.loc["Normalized Mean", name] = printed.loc["mean", column]
        norm.loc["Normalized Median", name] = printed.loc["median", column]
    body = means.map(_fmt)
    shown = means.round(1)
    bold = shown.eq(shown.max(axis=1), axis=0)
    norm = norm.round(3)
    agg = norm.map(lambda v: _fmt(v, 3))
    agg_bold = pd.DataFrame(False, index=norm.index, columns=norm.columns)
    agg_bold.loc["Normalized Mean"] = norm.loc["Normalized Mean"].eq(norm.loc["Normalized Mean"].max())
    agg_bold.loc["Normalized Median"] = norm.loc["Normalized Median"].eq(norm.loc["Normalized Median"].max())
    frame = pd.concat([body, agg])
    bold_all = pd.concat([bold, agg_bold])
    frame.insert(0, "Human", list(ref["human"].map(_fmt)) + ["1.000", "1.000"])
    frame.insert(0, "Random", list(ref["random"].map(_fmt)) + ["0.000", "0.000"])
    bold_all.insert(0, "Human", False)
    bold_all.insert(0, "Random", False)
    frame.index.name = "Game"
    return Table(
        frame, "Mean scores per game (final score over runs) and human-normalised mean and median; the paper's "
        "columns and their normalised rows are the paper's Table 1 as printed, bold is the best method per row.",
        bold_all, label="Table 1",
    )


def _scores_at(tidy: pd.DataFrame, step: int) -> pd.Series:
    """Mean score over runs at one env step (the final score for the last step) per game."""
    rows = tidy[tidy["env_step"] == step]
    return rows.groupby("game")["score"].mean().reindex(list(ATARI_100K_GAMES))


def table2(ours: pd.DataFrame, label: str = "Ours") -> Table:
    """Paper Table 2 layout: our scores at 5K/10K/25K/50K/75K/100K interactions beside SimPLe and SPR."""
    ref = paper.table2()
    means = pd.DataFrame({"SimPLe": ref["SimPLe"], "SPR": ref["SPR"]})
    for step in TABLE2_STEPS:
        means[f"{label} {step // 1000}K"] = _scores_at(ours, step)
    norm = _normalised_rows(means).loc[["Normalized Mean"]]
    paper_row = ["0.332", "0.616"] + [_fmt(paper.table2_normalized_mean()[c], 3) for c in paper.TABLE2_STEPS]
    frame = pd.concat([means.map(_fmt), norm.map(lambda v: _fmt(v, 3))])
    frame.loc["Paper TWM Normalized Mean"] = paper_row
    frame.insert(0, "Human", list(ref["human"].map(_fmt)) + ["1.000", "1.000"])
    frame.insert(0, "Random", list(ref["random"].map(_fmt)) + ["0.000", "0.000"])
    frame.index.name = "Game"
    return Table(
        frame, f"{label} at different numbers of interactions (mean over runs; '–' = not logged) beside the final "
        "scores of SimPLe and SPR; the last row is the paper's TWM.", label="Table 2",
    )


def _interval_cell(iv: Interval) -> str:
    return f"{iv.point:.3f}" if iv.lo is None else f"{iv.point:.3f} ({iv.lo:.3f}–{iv.hi:.3f})"


def aggregate_table(
    intervals: dict[str, dict[str, Interval]], runs: dict[str, int], above_human: dict[str, int],
    caption: str = "Aggregate human-normalised metrics with 95% stratified bootstrap CIs",
    poi: dict[str, Interval] | None = None, poi_column: str = "P(improve over base)",
) -> Table:
    """One row per method: median, IQM, mean, optimality gap (point and CI), runs per game, games >= human.

    Per-game means (1 run per game) show median and mean without CI and n/a for IQM and optimality gap."""
    rows, per_game = {}, []
    for name, ivs in intervals.items():
        row = {METRIC_LABELS[m]: _interval_cell(ivs[m]) if m in ivs else "n/a" for m in METRICS}
        row["Runs/game"] = str(runs[name])
        row["Games ≥ human"] = str(above_human[name])
        if poi is not None:
            row[poi_column] = _interval_cell(poi[name]) if name in poi else "–"
        rows[name] = row
        if runs[name] < 2:
            per_game.append(name)
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "Method"
    notes = [f"{', '.join(per_game)}: per-game means only (1 run per game): median and mean without CI; IQM and "
             "optimality gap are run-level statistics, n/a."] if per_game else []
    return Table(frame, caption, notes=notes)


def per_game_table(methods: dict[str, pd.DataFrame], caption: str) -> Table:
    """Per-game mean final scores of several methods/variants side by side, best in bold."""
    means = pd.DataFrame({k: per_game_means(v) for k, v in methods.items()}).reindex(list(ATARI_100K_GAMES))
    means = means.dropna(how="all")
    frame = means.map(_fmt)
    frame.index.name = "Game"
    shown = means.round(1)
    return Table(frame, caption, shown.eq(shown.max(axis=1), axis=0))


def runs_per_game_table(methods: dict[str, pd.DataFrame]) -> Table:
    """How many finished runs each method/variant has per game."""
    counts = {k: final_scores(v).groupby("game")["seed"].nunique() for k, v in methods.items()}
    frame = pd.DataFrame(counts).reindex(list(ATARI_100K_GAMES)).fillna(0).astype(int).astype(str)
    frame.index.name = "Game"
    return Table(frame, "Finished runs per game")
