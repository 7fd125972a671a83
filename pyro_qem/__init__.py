"""pyro_qem: massively parallel importance weighting and QEM inference for Pyro models."""

__version__ = "0.1.0"
