"""ratlit: the Region Attention Transformer (RAT) for medical image restoration."""

__version__ = "0.1.0"
