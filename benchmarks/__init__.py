"""Benchmarks of pyro_qem: QEM against Pyro SVI (and MP-VI / MP-RWS) on the QEM
paper's models, with a NUTS reference. Run ``python -m benchmarks.compare``."""
