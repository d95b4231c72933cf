"""Scores in one tidy format, from MLflow experiments, published per-run score files and the paper's means.

The tidy table has one row per (method, variant, game, seed, env_step) with the raw `score` and the
human-normalised score `hns = (score - random) / (human - random)` (paper Table 1 random/human).
This module is the only MLflow reader in `analysis`.

How a trainer must log a run so that `load_experiment` reads it (one MLflow experiment per grid,
experiment name == grid name):

- tags: `twm.grid` (grid name), `twm.variant` (variant name, e.g. "base"), `twm.game` (paper game name,
  e.g. "Breakout", "MsPacman"; see `analysis.ATARI_100K_GAMES`), `twm.seed` (integer), `twm.status`
  (set to "done" only once the final score is logged; MLflow's RUNNING/FAILED/FINISHED status is ignored);
- metric `eval/return`: the mean evaluation return, logged with `step` = env step at 5K, 10K, ..., 95K;
- metric `final/score`: the 100-episode final mean at the end (step = the final env step, 100K).

Runs whose `twm.status` is not "done" (or that lack `final/score`) are *partial*: they are returned in
`Experiment.partial` and listed in reports, never dropped silently.
"""

from __future__ import annotations

import difflib
import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import ATARI_100K_GAMES, OTHER_ATARI_GAMES, AnalysisError, paper

TAG_GRID = "twm.grid"
TAG_VARIANT = "twm.variant"
TAG_GAME = "twm.game"
TAG_SEED = "twm.seed"
TAG_STATUS = "twm.status"
STATUS_DONE = "done"
METRIC_EVAL = "eval/return"
METRIC_FINAL = "final/score"
FINAL_ENV_STEP = 100_000

TIDY_COLUMNS = ["method", "variant", "game", "seed", "env_step", "score", "hns"]
PUBLISHED_VARIANT = "published"
SERVER_CHECK_TIMEOUT_S = 3.0  # a server that does not answer is reported well within 10 s, start-up included


@dataclass
class Experiment:
    """Runs of one MLflow experiment: tidy scores of finished runs plus the runs table (incl. partial ones)."""

    name: str
    tracking_uri: str
    tidy: pd.DataFrame  # TIDY_COLUMNS, finished runs only
    runs: pd.DataFrame  # run_id, variant, game, seed, status, has_final, mlflow_status
    partial: pd.DataFrame = field(default_factory=pd.DataFrame)  # rows of `runs` that are not finished


def check_game(game: object, where: str) -> str:
    """Return `game` if it is an Atari 100k paper name, else raise naming `where` and what the name is."""
    if game in ATARI_100K_GAMES:
        return game
    if not isinstance(game, str):
        raise AnalysisError(f"{where}: game {json.dumps(game)} is not a game name")
    other = [g for g in OTHER_ATARI_GAMES if g.lower() == game.lower()]
    if other:
        raise AnalysisError(f"{where}: '{game}' is an Atari game but not one of the 26 Atari 100k games")
    close = difflib.get_close_matches(game, ATARI_100K_GAMES, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise AnalysisError(f"{where}: unknown game '{game}'{hint}; expected one of the 26 Atari 100k paper names")


def check_score(value: object, where: str) -> float:
    """A finite number as float, else raise naming `where` (game and run) and the value."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnalysisError(f"{where}: score {json.dumps(value)} is not a finite number")
    return float(value)


def normalise(scores: np.ndarray | pd.Series, games: np.ndarray | pd.Series) -> np.ndarray:
    """Human-normalised score (score - random) / (human - random) with the paper's random and human scores."""
    games = np.asarray(games)
    rand = paper.random_scores().reindex(games).to_numpy()
    human = paper.human_scores().reindex(games).to_numpy()
    return (np.asarray(scores, dtype=float) - rand) / (human - rand)


def denormalise(hns: np.ndarray, games: np.ndarray) -> np.ndarray:
    """Raw score from a human-normalised score (inverse of `normalise`)."""
    rand = paper.random_scores().reindex(games).to_numpy()
    human = paper.human_scores().reindex(games).to_numpy()
    return np.asarray(hns, dtype=float) * (human - rand) + rand


def make_tidy(rows: pd.DataFrame) -> pd.DataFrame:
    """Add `hns` and order/typify the columns of the tidy table."""
    frame = rows.copy()
    frame["hns"] = normalise(frame["score"], frame["game"])
    frame["seed"] = frame["seed"].astype(int)
    frame["env_step"] = frame["env_step"].astype(int)
    frame["score"] = frame["score"].astype(float)
    return frame[TIDY_COLUMNS].sort_values(["method", "variant", "game", "seed", "env_step"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- published score files


def load_score_file(path: str | Path, method: str | None = None, first_runs: int | None = None) -> pd.DataFrame:
    """Read a published per-run score file into the tidy format (final scores at env step 100K).

    Accepts `{game: [score per run, ...]}` or a list of records `{"game", "HNS", ...}` (rliable's CURL file:
    scores already human-normalised; the raw score is recovered with the paper's random/human, and a game's
    runs are its records in file order). `first_runs` keeps only the first runs of each game. Every score must
    be a finite number; a bad one is named with its game and run.
    """
    path = Path(path)
    method = method or path.stem
    if not path.is_file():
        raise AnalysisError(f"score file {path} does not exist")
    try:
        data = json.loads(path.read_text(), parse_constant=lambda c: c)  # NaN/Infinity stay strings: named below
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnalysisError(f"score file {path} is not valid JSON: {err}") from err
    rows = []
    if isinstance(data, dict):
        for game, scores in data.items():
            check_game(game, f"score file {path}")
            if not isinstance(scores, list) or not scores:
                raise AnalysisError(f"score file {path}: game '{game}' must map to a non-empty list of scores")
            rows += [(game, run, check_score(s, f"score file {path}: game '{game}', run {run}"))
                     for run, s in enumerate(scores)]
    elif isinstance(data, list):
        runs: dict[str, int] = {}
        for record in data:
            if not isinstance(record, dict) or "game" not in record or "HNS" not in record:
                raise AnalysisError(f"score file {path}: records must have 'game' and 'HNS' keys")
            game = check_game(record["game"], f"score file {path}")
            run = runs.get(game, 0)
            runs[game] = run + 1
            hns = check_score(record["HNS"], f"score file {path}: game '{game}', run {run} (HNS)")
            rows.append((game, run, denormalise(np.array([hns]), np.array([game]))[0]))
    else:
        raise AnalysisError(f"score file {path}: expected a {{game: [scores]}} object or a list of records")
    frame = pd.DataFrame(rows, columns=["game", "seed", "score"])
    if first_runs is not None:
        frame = frame[frame["seed"] < first_runs]
    frame["method"] = method
    frame["variant"] = PUBLISHED_VARIANT
    frame["env_step"] = FINAL_ENV_STEP
    return make_tidy(frame)


# ----------------------------------------------------------------------------- MLflow


def default_tracking_uri(runs_dir: str | Path = "twm-runs") -> str:
    """The suite's default tracking URI: a sqlite store inside the suite output folder."""
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def check_tracking_server(tracking_uri: str, timeout: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, GET <uri>/health once with a timeout; raise if the server does not answer.

    MLflow's own client retries for minutes against a stopped server; this check fails within `timeout`.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise AnalysisError(f"MLflow tracking server {tracking_uri} is not reachable ({reason})") from None
    if status != 200:
        raise AnalysisError(f"MLflow tracking server {tracking_uri} answered {url} with HTTP {status}")


def load_experiment(experiment: str, tracking_uri: str, method: str | None = None) -> Experiment:
    """Read every run of an MLflow experiment (see the module docstring for the tags and metrics)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.exists():
            raise AnalysisError(f"MLflow store {db} does not exist (tracking URI {tracking_uri})")
    check_tracking_server(tracking_uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as err:
        raise AnalysisError(f"cannot read MLflow at {tracking_uri}: {err}") from err
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(
            f"MLflow experiment '{experiment}' not found at {tracking_uri}; experiments there: {names or 'none'}"
        )
    runs = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    if not runs:
        raise AnalysisError(f"MLflow experiment '{experiment}' at {tracking_uri} has no runs")

    method = method or experiment
    table, rows = [], []
    for run in runs:
        tags = run.data.tags
        where = f"experiment '{experiment}', run {run.info.run_id}"
        missing = [t for t in (TAG_GAME, TAG_SEED) if t not in tags]
        if missing:
            raise AnalysisError(f"{where}: missing tag(s) {', '.join(missing)}")
        game = check_game(tags[TAG_GAME], where)
        try:
            seed = int(tags[TAG_SEED])
        except ValueError as err:
            raise AnalysisError(f"{where}: tag {TAG_SEED}='{tags[TAG_SEED]}' is not an integer") from err
        variant = tags.get(TAG_VARIANT, "base")
        status = tags.get(TAG_STATUS, "")
        has_final = METRIC_FINAL in run.data.metrics
        done = status == STATUS_DONE and has_final
        table.append(
            dict(run_id=run.info.run_id, variant=variant, game=game, seed=seed, status=status or "(none)",
                 has_final=has_final, mlflow_status=run.info.status, done=done)
        )
        if not done:
            continue
        for metric in (METRIC_EVAL, METRIC_FINAL):
            for point in client.get_metric_history(run.info.run_id, metric):
                value = check_score(point.value, f"{where} ({variant}/{game}/s{seed}): {metric} at step {point.step}")
                rows.append((method, variant, game, seed, point.step, value, metric))
    run_table = pd.DataFrame(table).sort_values(["variant", "game", "seed"]).reset_index(drop=True)
    dup = run_table[run_table["done"]].duplicated(["variant", "game", "seed"], keep=False)
    if dup.any():
        first = run_table[run_table["done"]][dup].iloc[0]
        raise AnalysisError(
            f"experiment '{experiment}': several finished runs for variant '{first.variant}', "
            f"game '{first.game}', seed {first.seed}"
        )
    points = pd.DataFrame(rows, columns=["method", "variant", "game", "seed", "env_step", "score", "metric"])
    # final/score wins over an eval/return logged at the same env step
    points = points.sort_values("metric", ascending=False).drop_duplicates(
        ["variant", "game", "seed", "env_step"], keep="last"
    )
    tidy = make_tidy(points.drop(columns="metric")) if len(points) else pd.DataFrame(columns=TIDY_COLUMNS)
    partial = run_table[~run_table["done"]].reset_index(drop=True)
    return Experiment(experiment, tracking_uri, tidy, run_table, partial)


# ----------------------------------------------------------------------------- views of the tidy table


def final_scores(tidy: pd.DataFrame) -> pd.DataFrame:
    """The last (final) score of every run: one row per (method, variant, game, seed)."""
    keys = ["method", "variant", "game", "seed"]
    idx = tidy.groupby(keys)["env_step"].idxmax()
    return tidy.loc[idx].reset_index(drop=True)


def hns_matrix(
    tidy: pd.DataFrame, games: tuple[str, ...] | list[str] = ATARI_100K_GAMES, where: str = "scores",
    value: str = "hns",
) -> np.ndarray:
    """(runs x games) matrix of the final scores of one method/variant; every game needs the same runs."""
    final = final_scores(tidy)
    counts = final.groupby("game")["seed"].apply(lambda s: sorted(s.tolist()))
    absent = [g for g in games if g not in counts.index]
    if absent:
        raise AnalysisError(f"{where}: no runs for game(s) {', '.join(absent)}")
    all_seeds = sorted(set().union(*[set(counts[g]) for g in games]))
    for game in games:
        if counts[game] != all_seeds:
            lost = sorted(set(all_seeds) - set(counts[game]))
            raise AnalysisError(
                f"{where}: game '{game}' has {len(counts[game])} runs but others have {len(all_seeds)} "
                f"(missing seed(s) {lost})"
            )
    pivot = final.pivot(index="seed", columns="game", values=value)
    return pivot.loc[all_seeds, list(games)].to_numpy(dtype=float)


def curve_tensor(
    tidy: pd.DataFrame, steps: list[int], games: tuple[str, ...] | list[str] = ATARI_100K_GAMES,
    where: str = "scores",
) -> np.ndarray:
    """(runs x games x steps) HNS tensor of evaluation curves; every run needs every step."""
    seeds = sorted(tidy["seed"].unique())
    full = pd.MultiIndex.from_product([seeds, list(games), steps], names=["seed", "game", "env_step"])
    series = tidy.set_index(["seed", "game", "env_step"])["hns"]
    series = series[~series.index.duplicated()]
    values = series.reindex(full)
    if values.isna().any():
        seed, game, step = values[values.isna()].index[0]
        raise AnalysisError(f"{where}: no evaluation of game '{game}', seed {seed} at env step {step}")
    return values.to_numpy().reshape(len(seeds), len(games), len(steps))


def complete_seeds(tidy: pd.DataFrame, games: tuple[str, ...] | list[str]) -> list[int]:
    """Seeds that have a final score on every one of `games`."""
    final = final_scores(tidy)
    per_seed = final.groupby("seed")["game"].apply(set)
    return sorted(int(s) for s, g in per_seed.items() if set(games) <= g)
