"""The 26 Atari 100k games (spec §2.6): paper name -> (ALE ROM id, minimal action count, FIRE game).

Torch-free and ALE-free so that the suite can validate names and plan grids instantly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Game:
    name: str  # paper name, e.g. "MsPacman"
    rom: str  # ale-py ROM id, e.g. "ms_pacman"
    num_actions: int  # size of the minimal action set
    fire: bool  # action 1 is FIRE -> FIRE wrappers, no AtariPreprocessing no-ops


# Action 1 is not FIRE in Asterix, CrazyClimber, Freeway, KungFuMaster, MsPacman (spec §2.6).
GAMES: dict[str, Game] = {
    g.name: g
    for g in [
        Game("Alien", "alien", 18, True),
        Game("Amidar", "amidar", 10, True),
        Game("Assault", "assault", 7, True),
        Game("Asterix", "asterix", 9, False),
        Game("BankHeist", "bank_heist", 18, True),
        Game("BattleZone", "battle_zone", 18, True),
        Game("Boxing", "boxing", 18, True),
        Game("Breakout", "breakout", 4, True),
        Game("ChopperCommand", "chopper_command", 18, True),
        Game("CrazyClimber", "crazy_climber", 9, False),
        Game("DemonAttack", "demon_attack", 6, True),
        Game("Freeway", "freeway", 3, False),
        Game("Frostbite", "frostbite", 18, True),
        Game("Gopher", "gopher", 8, True),
        Game("Hero", "hero", 18, True),
        Game("Jamesbond", "jamesbond", 18, True),
        Game("Kangaroo", "kangaroo", 18, True),
        Game("Krull", "krull", 18, True),
        Game("KungFuMaster", "kung_fu_master", 14, False),
        Game("MsPacman", "ms_pacman", 9, False),
        Game("Pong", "pong", 6, True),
        Game("PrivateEye", "private_eye", 18, True),
        Game("Qbert", "qbert", 6, True),
        Game("RoadRunner", "road_runner", 18, True),
        Game("Seaquest", "seaquest", 18, True),
        Game("UpNDown", "up_n_down", 6, True),
    ]
}


class UnknownGameError(ValueError):
    """A game name that is not one of the 26 Atari 100k games."""


def get_game(name: str) -> Game:
    """Look a game up by its paper name; the error lists the valid names."""
    try:
        return GAMES[name]
    except KeyError:
        close = [g for g in GAMES if g.lower() == name.lower().replace("_", "").replace("-", "")]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UnknownGameError(
            f"unknown game {name!r}{hint}; the 26 Atari 100k games are: {', '.join(GAMES)}"
        ) from None
