"""The research workbench: what a researcher runs and reads around a federation.

- :mod:`~lhs_federated.research.simulation`: ``simulate``, a study on simulated sites;
- :mod:`~lhs_federated.research.baselines`, :mod:`~lhs_federated.research.analysis`:
  pooled and local-only baselines, the cross-site matrix, calibration;
- :mod:`~lhs_federated.research.sweep`: grids of studies over seeds and settings;
- :mod:`~lhs_federated.research.plots`, :mod:`~lhs_federated.research.report`:
  figures and the self-contained HTML report.

It sits above the apps (a simulation runs the real ServerApp and ClientApp)
but imports no Flower itself: the engines are :mod:`lhs_federated.apps.engines`.
"""
