"""A grid's report: our runs beside published methods as the paper's tables and figures (report.md, report.html)."""

from __future__ import annotations

import base64
import html
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import ATARI_100K_GAMES, AnalysisError, figures, stats, tables
from analysis.scores import Experiment, complete_seeds, curve_tensor, final_scores, hns_matrix

BASE_VARIANT = "base"


@dataclass
class Method:
    """One column of the comparison: its tidy scores and the (runs x games) HNS matrix used for aggregates."""

    name: str
    tidy: pd.DataFrame
    hns: np.ndarray


@cache
def shipped_grids() -> dict[str, dict]:
    """The suite's grids as data (`suite/grids.json`, read as a file: analysis imports no suite code)."""
    return json.loads(resources.files("suite").joinpath("grids.json").read_text())


def paper_figure(grid: str) -> str:
    """The paper figure a grid reproduces, from its `figure` field in suite/grids.json."""
    raw = shipped_grids().get(grid)
    return raw["figure"] if raw is not None else f"ablation (experiment '{grid}' is not a shipped grid)"


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
    notes = "".join(f"<p><i>{_html_text(n)}</i></p>" for n in table.notes)
    title = f"{table.label}: {table.caption}" if table.label else table.caption
    return f"<p><b>{_html_text(title)}</b></p><table><tr>{head}</tr>{body}</table>{notes}"


def _frame_md(frame: pd.DataFrame) -> str:
    head = list(frame.columns)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.to_numpy()]
    return "\n".join(lines) + "\n"


def _html_text(text: str) -> str:
    """Escaped text with `code spans` as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text, quote=False))


def write_report(
    exp: Experiment, baselines: dict[str, pd.DataFrame], out_dir: Path, command: str, baselines_source: str,
    reps: int = stats.DEFAULT_REPS, profile_reps: int = stats.DEFAULT_PROFILE_REPS, seed: int = stats.DEFAULT_SEED,
    games: tuple[str, ...] | None = None, tau_max: float = stats.DEFAULT_TAU_MAX,
) -> dict[str, Path]:
    """Compute everything for a grid, write tables, figures, report.md and a self-contained report.html.

    Aggregates run over `games` (default: the games of the base variant). Every method's bootstrap stream
    depends only on its name and `seed`; per-game-mean baselines (1 run per game) get no intervals, no
    profile and no probability of improvement."""
    out_dir = Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    if exp.tidy.empty:
        raise AnalysisError(f"experiment '{exp.name}' has no finished runs (twm.status=done with {len(exp.partial)} "
                            "partial run(s))")
    base = base_variant(list(exp.tidy["variant"].unique()))
    variants = sorted(exp.tidy["variant"].unique(), key=lambda v: (v != base, v))
    single = len(variants) == 1
    label = {v: ("Ours" if single else f"Ours ({v})") for v in variants}
    present = set(final_scores(exp.tidy[exp.tidy["variant"] == base])["game"])
    if games is not None and not set(games) <= present:
        raise AnalysisError(f"experiment '{exp.name}', variant '{base}': no finished run on "
                            f"{', '.join(g for g in games if g not in present)} (--games)")
    games = list(games) if games is not None else [g for g in ATARI_100K_GAMES if g in present]
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
    for name, b in baselines.items():
        if name in {m.name for m in methods}:
            raise AnalysisError(f"baseline '{name}' has the name of one of our variants")
        methods.append(Method(name, b, hns_matrix(b, games, where=f"baseline {name}")))
    styles = figures.method_styles([m.name for m in methods])
    taus = stats.profile_taus(tau_max)

    def stream(name: str) -> int:
        return stats.stream_seed(name, seed)

    intervals, profiles, runs, above = {}, {}, {}, {}
    for m in tqdm(methods, desc="bootstrap CIs", unit="method", file=sys.stderr):
        intervals[m.name] = stats.aggregate_intervals(m.hns, reps=reps, seed=stream(m.name))
        if m.hns.shape[0] > 1:
            profiles[m.name] = (taus, *stats.performance_profile(m.hns, taus, reps=profile_reps, seed=stream(m.name)))
        runs[m.name] = m.hns.shape[0]
        above[m.name] = stats.games_above_human(m.hns)
    curves = {}
    for m in tqdm(list(ours.values()), desc="sample-efficiency CIs", unit="variant", file=sys.stderr):
        c = _curves(m, games)
        if c is not None:
            curves[m.name] = (c[0], *stats.iqm_curve(c[1], reps=reps, seed=stream(f"{m.name} curve")))
    poi, pairs = {}, []  # ablation variants vs base; our reference vs each run-level baseline
    reference = ours.get(base)
    if reference is not None and reference.hns.shape[0] < 2:
        reference = None  # one run per game: no probability of improvement
    for v, m in ours.items():
        if v != base and reference is not None and m.hns.shape[0] > 1:
            poi[m.name] = stats.probability_of_improvement(m.hns, reference.hns, reps=reps,
                                                           seed=stream(f"P({m.name} > {reference.name})"))
            pairs.append((m.name, reference.name, poi[m.name]))
    if reference is not None:
        for m in methods[len(ours):]:
            if m.hns.shape[0] > 1:
                iv = stats.probability_of_improvement(reference.hns, m.hns, reps=reps,
                                                      seed=stream(f"P({reference.name} > {m.name})"))
                pairs.append((reference.name, m.name, iv))

    subset = "" if len(games) == len(ATARI_100K_GAMES) else f" on {len(games)} games ({', '.join(games)})"
    written: dict[str, Path] = {}
    tabs: list[tuple[str, tables.Table]] = []
    over_baselines = {y: iv for x, y, iv in pairs if reference is not None and x == reference.name}
    tabs.append(("aggregates", tables.aggregate_table(
        intervals, runs, above, f"Aggregate human-normalised metrics{subset} with 95% stratified bootstrap CIs "
        f"({reps} reps, seed {seed})", poi=over_baselines if over_baselines else None,
        poi_column=f"P({reference.name} > row)" if reference is not None else "")))
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
                 figures.save(figures.aggregate_metrics(intervals, styles), fig_dir, "fig3_aggregates")))
    if profiles:
        figs.append(("fig4_profiles", f"Figure 4: performance profiles over τ ∈ [0, {tau_max:g}] with 95% CIs",
                     figures.save(figures.performance_profiles(profiles, styles), fig_dir, "fig4_profiles")))
    if pairs:
        figs.append(("probability_of_improvement", "Probability of improvement P(X > Y) with 95% CIs",
                     figures.save(figures.probability_of_improvement(pairs, styles), fig_dir,
                                  "probability_of_improvement")))
    if curves:
        figs.append(("sample_efficiency", "Sample efficiency: IQM vs env steps with 95% CIs",
                     figures.save(figures.sample_efficiency(curves, styles), fig_dir, "sample_efficiency")))
    variant_styles = {v: styles.get(label[v], figures.OTHER_STYLES[0]) for v in variants}  # as in the others
    for v in variants:
        if v == base:
            continue
        title = f"{paper_figure(exp.name)}: {base} vs {v}"
        frame = _ablation_frame(exp.tidy, [base, v], games)
        figs.append((f"ablation_{v}", title, figures.save(figures.ablation_curves(frame, title, variant_styles),
                                                          fig_dir, f"ablation_{v}")))

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
    body_html += [f"<li>{_html_text(line[2:])}</li>" for line in header if line.startswith("- ")]
    body_html.append("</ul><h2>Missing and partial runs</h2>")
    body_html.append("<p>None: every expected run finished.</p>" if missing.empty and partial.empty and not notes
                     else "")
    for title, frame in (("Missing", missing), ("Partial", partial)):
        if not frame.empty:
            body_html.append(f"<p>{title} ({len(frame)})</p>" + frame.to_html(index=False))
    body_html += [f"<p>{_html_text(n)}</p>" for n in notes]
    md += ["## Tables", ""]
    body_html.append("<h2>Tables</h2>")
    for key, table in tabs:
        md += [table.to_markdown(), f"(files: `tables/{key}.md`, `.csv`, `.tex`)", ""]
        body_html.append(_table_html(table) + f"<p>(files: <code>tables/{key}.md</code>, <code>.csv</code>, "
                         "<code>.tex</code>)</p>")
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

