"""Governance: who approved a study, what happened in it, and proof nobody altered the record.

Flower-free, so that a site's own runtime (the deployment gate) can import it
before any study code runs:

- :mod:`~lhs_federated.governance.keys`: Ed25519 signing keys (private file
  mode 0600, public key beside it).
- :mod:`~lhs_federated.governance.ledger`: the append-only, hash-chained,
  signed JSON Lines ledger, and its offline verification.
- :mod:`~lhs_federated.governance.approval`: a site's approvals registry
  (study hash + code hash, who, when, why; revocations).
- :mod:`~lhs_federated.governance.site_folder`: a site's governance folder
  (key, approvals registry, site ledger) and the check a site runs before any
  study code.
"""
