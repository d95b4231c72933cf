"""A grid's report: our runs beside published methods as the paper's tables and figures (report.md, report.html)."""

from __future__ import annotations

import base64
import html
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import ATARI_100K_GAMES, AnalysisError, figures, paper, stats, tables
from analysis.scores import Experiment, complete_seeds, curve_tensor, final_scores, hns_matrix

PROFILE_TAUS = np.linspace(0.0, 8.0, 81)
BASE_VARIANT = "base"
# Keyword in a variant name -> the paper figure it reproduces.
PAPER_FIGURES = [
    ("uniform", "Figure 7 (uniform vs balanced sampling)"),
    ("reward", "Figure 8 (no reward input)"),
    ("entropy", "Figure 15 (no entropy threshold, Γ=1)"),
    ("history", "Figure 16 (history length ℓ=4)"),
    ("policy", "Figure 17 (policy input [z,h])"),
    ("interaction", "Figure 18 (fewer interactions, same budget)"),
    ("capacity", "Figure 18 (fewer interactions, same budget)"),
]


@dataclass
class Method:
    """One column of the comparison: its tidy scores and the (runs x games) HNS matrix used for aggregates."""

    name: str
    tidy: pd.DataFrame
    hns: np.ndarray


def paper_figure_for(variant: str) -> str:
    """Which paper figure an ablation variant corresponds to (by keyword in its name)."""
    for key, label in PAPER_FIGURES:
        if key in variant.lower():
            return label
    return "ablation"


def base_variant(variants: list[str]) -> str:
    """The variant other variants are compared with: 'base' if present, else the first by name."""
    return BASE_VARIANT if BASE_VARIANT in variants else sorted(variants)[0]


def inventory(exp: Experiment) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(missing, partial): expected (variant, game, seed) cells without a finished run, and unfinished runs.

    A variant is expected to have every seed seen anywhere in the grid on every game it has runs for.
    """
    runs = exp.runs
    seeds = sorted(runs["seed"].unique())
    missing = []
    for variant, group in runs.groupby("variant"):
        done = set(map(tuple, group[group["done"]][["game", "seed"]].to_numpy()))
        for game in sorted(group["game"].unique(), key=ATARI_100K_GAMES.index):
            missing += [(variant, game, s) for s in seeds if (game, s) not in done]
    missing_df = pd.DataFrame(missing, columns=["variant", "game", "seed"])
    return missing_df, exp.partial[["variant", "game", "seed", "status", "mlflow_status", "has_final", "run_id"]]


def _variant_method(exp: Experiment, variant: str, games: list[str], label: str) -> tuple[Method, list[str]]:
    """Aggregate matrix of a variant on `games` from the seeds complete on all of them; notes on what was left out."""
    tidy = exp.tidy[exp.tidy["variant"] == variant]
    seeds = complete_seeds(tidy, games)
    notes = []
    if not seeds:
        raise AnalysisError(
            f"experiment '{exp.name}', variant '{variant}': no seed has finished runs on all of {len(games)} games"
        )
    left = final_scores(tidy)
    left = left[~left["seed"].isin(seeds) & left["game"].isin(games)]
    if len(left):
        cells = ", ".join(f"{g}/s{s}" for g, s in left[["game", "seed"]].to_numpy())
        notes.append(f"{label}: finished runs not in the aggregates (their seed misses other games): {cells}")
    used = tidy[tidy["seed"].isin(seeds)]
    return Method(label, used, hns_matrix(used, games, where=f"{label}")), notes


def _curves(method: Method, games: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Env steps logged by every run of the method and the (runs x games x steps) HNS tensor."""
    tidy = method.tidy[method.tidy["game"].isin(games)]
    per_run = tidy.groupby(["game", "seed"])["env_step"].apply(set)
    steps = sorted(set.intersection(*per_run.tolist())) if len(per_run) else []
    if len(steps) < 2:
        return None
    return np.array(steps), curve_tensor(tidy, steps, games, where=method.name)


def _ablation_frame(tidy: pd.DataFrame, variants: list[str], games: list[str]) -> pd.DataFrame:
    rows = tidy[tidy["variant"].isin(variants) & tidy["game"].isin(games)]
    agg = rows.groupby(["variant", "game", "env_step"])["hns"].agg(["mean", "min", "max"]).reset_index()
    agg["game"] = pd.Categorical(agg["game"], categories=games, ordered=True)
    return agg.sort_values(["game", "variant", "env_step"])


def _table_html(table: tables.Table) -> str:
    cells = table.frame.map(html.escape)
    if table.bold is not None:
        cells = cells.where(~table.bold, cells.map(lambda v: f"<b>{v}</b>"))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.frame.index.name or ""] + list(cells.columns))
    body = "".join(
        "<tr><th>" + html.escape(str(i)) + "</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for i, row in zip(cells.index, cells.values, strict=True)
    )
    notes = "".join(f"<p><i>{html.escape(n)}</i></p>" for n in table.notes)
    return f"<p><b>{html.escape(table.caption)}</b></p><table><tr>{head}</tr>{body}</table>{notes}"


def _frame_md(frame: pd.DataFrame) -> str:
    head = list(frame.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join(lines) + "\n"


def write_report(
    exp: Experiment, baselines: pd.DataFrame, out_dir: Path, command: str, baselines_source: str,
    reps: int = stats.DEFAULT_REPS, profile_reps: int = stats.DEFAULT_PROFILE_REPS, seed: int = stats.DEFAULT_SEED,
) -> dict[str, Path]:
    """Compute everything for a grid, write tables, figures, report.md and a self-contained report.html."""
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    if exp.tidy.empty:
        raise AnalysisError(f"experiment '{exp.name}' has no finished runs (twm.status=done with {len(exp.partial)} "
                            "partial run(s))")
    base = base_variant(list(exp.tidy["variant"].unique()))
    variants = sorted(exp.tidy["variant"].unique(), key=lambda v: (v != base, v))
    single = len(variants) == 1
    label = {v: ("Ours" if single else f"Ours ({v})") for v in variants}
    games = [g for g in ATARI_100K_GAMES if g in set(final_scores(exp.tidy[exp.tidy["variant"] == base])["game"])]
    missing, partial = inventory(exp)
    notes: list[str] = []

    ours: dict[str, Method] = {}
    for v in variants:
        v_games = [g for g in games if g in set(exp.tidy[exp.tidy["variant"] == v]["game"])]
        if v_games != games:
            lost = sorted(set(games) - set(v_games))
            notes.append(f"{label[v]}: no finished run on {', '.join(lost)}; left out of the comparison")
            continue
        ours[v], n = _variant_method(exp, v, games, label[v])
        notes += n
    methods: list[Method] = list(ours.values())
    for name in dict.fromkeys(baselines["method"]):
        b = baselines[baselines["method"] == name]
        methods.append(Method(name, b, hns_matrix(b, games, where=f"baseline {name}")))

    intervals, profiles, runs, above = {}, {}, {}, {}
    for i, m in enumerate(tqdm(methods, desc="bootstrap CIs", unit="method", file=sys.stderr)):
        intervals[m.name] = stats.aggregate_intervals(m.hns, reps=reps, seed=seed + i)
        point, lo, hi = stats.performance_profile(m.hns, PROFILE_TAUS, reps=profile_reps, seed=seed + i)
        profiles[m.name] = (PROFILE_TAUS, point, lo, hi)
        runs[m.name] = m.hns.shape[0]
        above[m.name] = stats.games_above_human(m.hns)
    curves = {}
    for i, m in enumerate(tqdm(list(ours.values()), desc="sample-efficiency CIs", unit="variant", file=sys.stderr)):
        c = _curves(m, games)
        if c is not None:
            point, lo, hi = stats.iqm_curve(c[1], reps=reps, seed=seed + i)
            curves[m.name] = (c[0], point, lo, hi)
    poi = {}
    for i, (v, m) in enumerate(ours.items()):
        if v != base and base in ours:
            poi[m.name] = stats.probability_of_improvement(m.hns, ours[base].hns, reps=reps, seed=seed + i)

    subset = "" if len(games) == len(ATARI_100K_GAMES) else f" on {len(games)} games ({', '.join(games)})"
    written: dict[str, Path] = {}
    tabs: list[tuple[str, tables.Table]] = []
    tabs.append(("aggregates", tables.aggregate_table(
        intervals, runs, above, f"Aggregate human-normalised metrics{subset} with 95% stratified bootstrap CIs "
        f"({reps} reps, seed {seed})")))
    tabs.append(("table1", tables.table1({label[v]: m.tidy for v, m in ours.items()})))
    tabs.append(("table2", tables.table2(ours[base].tidy, label[base]) if base in ours else None))
    if len(ours) > 1:
        tabs.append(("ablation_aggregates", tables.aggregate_table(
            {m.name: intervals[m.name] for m in ours.values()}, runs, above,
            f"Ablations{subset}: aggregates and probability of improvement over '{base}'", poi=poi)))
        tabs.append(("ablation_per_game", tables.per_game_table(
            {m.name: m.tidy for m in ours.values()}, "Ablations: mean final score per game")))
    tabs.append(("runs_per_game", tables.runs_per_game_table(
        {label[v]: exp.tidy[exp.tidy["variant"] == v] for v in variants})))
    tabs = [(k, t) for k, t in tabs if t is not None]
    for key, table in tabs:
        written[key] = table.write(tab_dir, key)[0]

    figs: list[tuple[str, str, list[Path]]] = []
    figs.append(("fig3_aggregates", "Figure 3: aggregate metrics with 95% CIs",
                 figures.save(figures.aggregate_metrics(intervals), fig_dir, "fig3_aggregates")))
    figs.append(("fig4_profiles", "Figure 4: performance profiles with 95% CI bands",
                 figures.save(figures.performance_profiles(profiles), fig_dir, "fig4_profiles")))
    if curves:
        figs.append(("sample_efficiency", "Sample efficiency: IQM vs env steps with 95% CIs",
                     figures.save(figures.sample_efficiency(curves), fig_dir, "sample_efficiency")))
    for v in variants:
        if v == base:
            continue
        title = f"{paper_figure_for(v)}: {base} vs {v}"
        frame = _ablation_frame(exp.tidy, [base, v], games)
        figs.append((f"ablation_{v}", title, figures.save(figures.ablation_curves(frame, title), fig_dir,
                                                          f"ablation_{v}")))

    n_runs = final_scores(exp.tidy).groupby(["variant", "game"]).size().unstack("variant").reindex(games)
    n_runs = n_runs.fillna(0).astype(int)
    header = [
        f"# Report: grid `{exp.name}`",
        "",
        f"- Command: `{command}`",
        f"- Data source: MLflow experiment `{exp.name}` at `{exp.tracking_uri}` ({len(exp.runs)} runs: "
        f"{int(exp.runs['done'].sum())} finished, {len(partial)} partial)",
        f"- Baselines: {baselines_source}",
        f"- Bootstrap: {reps} reps (profiles {profile_reps}), seed {seed}; human-normalised with the paper's "
        "random and human scores",
        "- Runs per game (finished): " + "; ".join(
            f"{label[v]}: {n_runs[v].min()}–{n_runs[v].max()}" for v in n_runs.columns),
        "",
    ]
    problems = ["## Missing and partial runs", ""]
    if missing.empty and partial.empty and not notes:
        problems.append("None: every expected run finished.")
    if not missing.empty:
        problems += [f"Missing ({len(missing)}): no finished run for these cells.", "", _frame_md(missing)]
    if not partial.empty:
        problems += [f"Partial ({len(partial)}): runs whose `twm.status` is not `done`.", "",
                     _frame_md(partial.astype(str))]
    problems += [f"- {n}" for n in notes]
    problems.append("")

    md = header + problems
    body_html = [f"<h1>Report: grid <code>{html.escape(exp.name)}</code></h1><ul>"]
    body_html += [f"<li>{html.escape(line[2:])}</li>" for line in header if line.startswith("- ")]
    body_html.append("</ul><h2>Missing and partial runs</h2>")
    body_html.append("<p>None: every expected run finished.</p>" if missing.empty and partial.empty and not notes
                     else "")
    for title, frame in (("Missing", missing), ("Partial", partial)):
        if not frame.empty:
            body_html.append(f"<p>{title} ({len(frame)})</p>" + frame.to_html(index=False))
    body_html += [f"<p>{html.escape(n)}</p>" for n in notes]
    md += ["## Tables", ""]
    body_html.append("<h2>Tables</h2>")
    for key, table in tabs:
        md += [table.to_markdown(), f"(files: `tables/{key}.md`, `.csv`, `.tex`)", ""]
        body_html.append(_table_html(table))
    md += ["## Figures", ""]
    body_html.append("<h2>Figures</h2>")
    for key, title, paths in figs:
        md += [f"### {title}", "", f"![{title}](figures/{key}.png)", ""]
        data = base64.b64encode(paths[0].read_bytes()).decode()
        body_html.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                         f"src='data:image/png;base64,{data}' style='max-width:100%'>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Report {html.escape(exp.name)}</title>"
            f"<style>{style}</style></head><body>{''.join(body_html)}</body></html>")
    written["report.md"] = out_dir / "report.md"
    written["report.html"] = out_dir / "report.html"
    written["report.md"].write_text("\n".join(md))
    written["report.html"].write_text(page)
    return written


def paper_reference_curve() -> tuple[np.ndarray, np.ndarray]:
    """The paper's TWM normalised mean at 5K ... 100K interactions (Table 2)."""
    row = paper.table2_normalized_mean()
    return np.array(list(paper.TABLE2_STEPS.values())), np.array([row[c] for c in paper.TABLE2_STEPS])
