"""lcsc: Linear Combination of Saved Checkpoints (Liu et al., ICLR 2025) as a reproducible workflow."""

__version__ = "0.1.0"
