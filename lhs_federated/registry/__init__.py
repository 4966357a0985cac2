"""The model registry: immutable, signed, versioned releases and their status.

See :mod:`lhs_federated.registry.store`.
"""
