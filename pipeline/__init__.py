"""edgepipe: distill a PyTorch teacher into small, verified edge artifacts."""

__version__ = "0.1.0"
