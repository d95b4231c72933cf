"""Grids as data, and the run identity: a grid (preset x variants x games x seeds) expands to RunSpecs.

The grids live in `grids.json` beside this module. A RunSpec is one cell; its key
(grid, variant, game, seed, config hash) names its run directory, its MLflow run and tags, and its
job. Torch-free and MLflow-free so that planning a 130-run grid takes milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from twm.config import Config, ConfigError, preset
from twm.games import GAMES, get_game
from twm.run_record import TAG_GRID, TAG_RUN_KEY, TAG_VARIANT

GRIDS_FILE = Path(__file__).with_name("grids.json")


class GridError(ValueError):
    """An unknown grid, game, variant or seed, or a bad override (one-line message)."""


@dataclass(frozen=True)
class Grid:
    """A named grid: a preset, named override sets (variants), default games and seeds."""

    name: str
    description: str
    source: str  # where in the paper the grid comes from
    figure: str  # the paper figure (or table) the grid reproduces; reports label the grid's figures with it
    preset: str
    games: tuple[str, ...]
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, str]]  # variant name -> {dotted.key: value}

    @property
    def num_runs(self) -> int:
        return len(self.variants) * len(self.games) * len(self.seeds)


@dataclass(frozen=True)
class RunSpec:
    """One cell of a grid; everything a job needs to run it and to find it again."""

    grid: str
    variant: str
    game: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, str], ...]  # variant overrides, then launch-wide --set overrides
    config_hash: str

    @property
    def key(self) -> str:
        """The run identity as one string: `grid/variant/game/s<seed>-<hash>`."""
        return f"{self.grid}/{self.variant}/{self.game}/s{self.seed}-{self.config_hash}"

    @property
    def run_name(self) -> str:
        """MLflow run name (the experiment already names the grid)."""
        return f"{self.variant}/{self.game}/s{self.seed}-{self.config_hash}"

    @property
    def job_name(self) -> str:
        return "twm:" + self.key

    def run_dir(self, runs_dir: Path) -> Path:
        return runs_dir / self.grid / self.variant / self.game / f"s{self.seed}-{self.config_hash}"

    def tags(self) -> dict[str, str]:
        """The identity tags the suite adds to the trainer's own (twm.game, twm.seed, ...)."""
        return {TAG_GRID: self.grid, TAG_VARIANT: self.variant, TAG_RUN_KEY: self.key}


@cache
def _raw_grids() -> dict[str, dict]:
    return json.loads(GRIDS_FILE.read_text())


def grid_names() -> list[str]:
    return list(_raw_grids())


def get_grid(name: str) -> Grid:
    """A grid by name; the error lists the valid names."""
    raw = _raw_grids().get(name)
    if raw is None:
        raise GridError(f"unknown grid {name!r}; grids are: {', '.join(grid_names())}")
    games = tuple(GAMES) if raw["games"] == "all" else tuple(raw["games"])
    return Grid(name=name, description=raw["description"], source=raw["source"], figure=raw["figure"],
                preset=raw["preset"], games=games, seeds=tuple(raw["seeds"]), variants=dict(raw["variants"]))


def parse_games(text: str) -> tuple[str, ...]:
    """`--games Pong,Breakout` (or `all`) -> validated paper names."""
    if text.strip() == "all":
        return tuple(GAMES)
    names = tuple(g.strip() for g in text.split(",") if g.strip())
    if not names:
        raise GridError(f"bad --games {text!r}: expected a comma-separated list of games, or 'all'")
    for name in names:
        try:
            get_game(name)
        except ValueError as err:
            raise GridError(str(err)) from None
    return names


def parse_seeds(text: str) -> tuple[int, ...]:
    """`--seeds 0,1,2`, `--seeds 0-4` or `--seeds 0-2,7` -> sorted distinct non-negative ints."""
    seeds: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            lo, dash, hi = part.partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if first < 0 or last < first:
                raise ValueError
            seeds.update(range(first, last + 1))
    except ValueError:
        raise GridError(f"bad --seeds {text!r}: expected e.g. 0,1,2 or 0-4") from None
    return tuple(sorted(seeds))


def plan(grid: Grid, games: tuple[str, ...] | None = None, seeds: tuple[int, ...] | None = None,
         variants: tuple[str, ...] | None = None, overrides: dict[str, str] | None = None) -> list[RunSpec]:
    """Expand a grid (optionally narrowed or widened by --games/--seeds/--variants, with launch-wide
    config overrides) into RunSpecs, variant-major then game then seed. Validates every config."""
    for variant in variants or ():
        if variant not in grid.variants:
            raise GridError(f"unknown variant {variant!r} of grid {grid.name}; "
                            f"variants are: {', '.join(grid.variants)}")
    base = _preset(grid.preset)
    specs = []
    for variant in variants or tuple(grid.variants):
        merged = {**grid.variants[variant], **(overrides or {})}
        config = _configure(base, merged, f"grid {grid.name} variant {variant}")
        config_hash = config.hash()
        for game in games or grid.games:
            for seed in seeds or grid.seeds:
                specs.append(RunSpec(grid=grid.name, variant=variant, game=game, seed=seed, preset=grid.preset,
                                     overrides=tuple(merged.items()), config_hash=config_hash))
    return specs


def _preset(name: str) -> Config:
    try:
        return preset(name)
    except ConfigError as err:
        raise GridError(str(err)) from None


def _configure(base: Config, overrides: dict[str, str], where: str) -> Config:
    try:
        return base.with_overrides(overrides)
    except ConfigError as err:
        raise GridError(f"{where}: {err}") from None
