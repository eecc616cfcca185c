"""bench: a fair, fast, resumable benchmark suite for backdoor defenses on image classifiers."""
from bench.registry import ATTACKS, DATASETS, DEFENSES, MODELS

__version__ = "0.1.0"
__all__ = ["ATTACKS", "DATASETS", "DEFENSES", "MODELS", "__version__"]
