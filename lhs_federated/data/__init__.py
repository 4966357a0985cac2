"""Data contracts, sources, validation, encoding, splits and federated statistics."""
