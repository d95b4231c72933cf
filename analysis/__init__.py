"""Turn tracked TWM runs and published per-run scores into the paper's tables, figures and reports.

Layers: `scores` (the only MLflow reader; everything becomes one tidy DataFrame), `stats` (pure functions
on (runs x games) arrays, rliable point estimates and seeded stratified-bootstrap CIs), `tables`,
`figures` (only draws), `report` (report.md / report.html), `baselines` (the score ledger shipped in
`analysis/ledger/`) and `cli` (the `report`, `compare` and `baselines` verbs). This package never imports
`twm` or torch.
"""

from __future__ import annotations

ATARI_100K_GAMES: tuple[str, ...] = (
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout",
    "ChopperCommand", "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero",
    "Jamesbond", "Kangaroo", "Krull", "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert",
    "RoadRunner", "Seaquest", "UpNDown",
)  # paper names; identical to the keys of the published HUMAN.json / RANDOM.json
# The other 31 games of the Atari 57 benchmark: named as such when a score file uses one.
OTHER_ATARI_GAMES: tuple[str, ...] = (
    "Asteroids", "Atlantis", "BeamRider", "Berzerk", "Bowling", "Centipede", "Defender", "DoubleDunk", "Enduro",
    "FishingDerby", "Gravitar", "IceHockey", "MontezumaRevenge", "NameThisGame", "Phoenix", "Pitfall",
    "Riverraid", "Robotank", "Skiing", "Solaris", "SpaceInvaders", "StarGunner", "Surround", "Tennis",
    "TimePilot", "Tutankham", "Venture", "VideoPinball", "WizardOfWor", "YarsRevenge", "Zaxxon",
)


class AnalysisError(Exception):
    """Bad input to the analysis (unknown game, missing runs, empty experiment, ...); the message names it."""


__all__ = ["ATARI_100K_GAMES", "OTHER_ATARI_GAMES", "AnalysisError"]
