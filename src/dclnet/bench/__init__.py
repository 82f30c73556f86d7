"""Benchmarks behind ``dclnet benchmark`` (see docs/benchmarks.md).

- :mod:`~dclnet.bench.common`: sizes, timing, peak memory, machine description, the table.
- :mod:`~dclnet.bench.train_step`: training step (baseline, full DCLNet, plain ResNet) and
  the data pipeline.
- :mod:`~dclnet.bench.components`: evaluation (ranking metrics, feature extraction) and the
  dense contrastive loss.
"""
