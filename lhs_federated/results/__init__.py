"""A run's outputs: the results folder as it is written, read back, and progress events.

- :mod:`~lhs_federated.results.writer.writer`: the files of a run, written as they
  happen (metrics, rounds, sites, summary, failure), and the versions it ran on;
- :mod:`~lhs_federated.results.writer.reader`: a finished run read back as DataFrames;
- :mod:`~lhs_federated.results.writer.progress`: progress events of a running study.

Flower-free and below every layer that writes or reads a run.
"""
