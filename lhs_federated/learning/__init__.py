"""The learning core: what a model is and what a site computes with it, without Flower.

- :mod:`~lhs_federated.learning.models`: model families by name (PyTorch);
- :mod:`~lhs_federated.learning.parameters`: models <-> named numpy arrays;
- :mod:`~lhs_federated.learning.export`: released models (npz, scikit-learn);
- :mod:`~lhs_federated.learning.training`: local training and prediction;
- :mod:`~lhs_federated.learning.metrics`: clinical metrics with reasons for the undefined;
- :mod:`~lhs_federated.learning.site`: a site's work for a study (summaries,
  preprocessing, training, evaluation);
- :mod:`~lhs_federated.learning.scaffold`, :mod:`~lhs_federated.learning.personalisation`:
  the arithmetic of SCAFFOLD's drift correction and of local fine-tuning.
"""
