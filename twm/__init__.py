"""TWM: a faithful, fast Transformer-based World Model agent for Atari 100k (one run = one game, one seed)."""

__version__ = "0.1.0"
