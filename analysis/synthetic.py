"""Synthetic runs logged to MLflow exactly as the trainer logs them (see `analysis.scores`), for tests/benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from analysis import ATARI_100K_GAMES, paper
from analysis.scores import (
    FINAL_ENV_STEP,
    METRIC_EVAL,
    METRIC_FINAL,
    STATUS_DONE,
    TAG_GAME,
    TAG_GRID,
    TAG_SEED,
    TAG_STATUS,
    TAG_VARIANT,
)

EVAL_STEPS = list(range(5_000, FINAL_ENV_STEP, 5_000))  # 5K ... 95K


def log_grid(
    tracking_uri: str, grid: str, variants: dict[str, float], games: Iterable[str] = ATARI_100K_GAMES,
    seeds: Iterable[int] = range(5), seed: int = 0, skip: Iterable[tuple[str, str, int]] = (),
    partial: Iterable[tuple[str, str, int]] = (),
) -> str:
    """Log one run per (variant, game, seed) into experiment `grid`; variant value scales the paper's TWM score.

    `skip` cells are not logged at all; `partial` cells are logged without `final/score` and with status
    "running". Returns the experiment id.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = client.create_experiment(grid)
    rng = np.random.default_rng(seed)
    table = paper.table1()
    skip, partial = set(skip), set(partial)
    for variant, scale in variants.items():
        for game in games:
            rand, human, target = table.loc[game, ["random", "human", "TWM"]]
            for s in seeds:
                if (variant, game, s) in skip:
                    continue
                done = (variant, game, s) not in partial
                tags = {TAG_GRID: grid, TAG_VARIANT: variant, TAG_GAME: game, TAG_SEED: str(s),
                        TAG_STATUS: STATUS_DONE if done else "running"}
                run = client.create_run(exp_id, tags=tags)
                final = rand + scale * (target - rand) * rng.uniform(0.5, 1.5)
                metrics = [
                    Metric(METRIC_EVAL, float(rand + (final - rand) * step / FINAL_ENV_STEP * rng.uniform(0.7, 1.3)),
                           0, step)
                    for step in EVAL_STEPS
                ]
                if done:
                    metrics.append(Metric(METRIC_FINAL, float(final), 0, FINAL_ENV_STEP))
                client.log_batch(run.info.run_id, metrics=metrics)
                client.set_terminated(run.info.run_id, "FINISHED" if done else "RUNNING")
    return exp_id
