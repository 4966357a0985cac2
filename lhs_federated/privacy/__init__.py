"""Privacy at the sites: DP noise with a budget that is never exceeded, and what may leave.

- :mod:`~lhs_federated.privacy.spec`: the study's ``[privacy]`` section;
- :mod:`~lhs_federated.privacy.accounting`: the noise plan of a study at a site
  (calibrated once for the whole plan) and epsilon of accountant histories;
- :mod:`~lhs_federated.privacy.dp_sgd`: one round of local training with Opacus;
- :mod:`~lhs_federated.privacy.distributed`: a site's share of client-level
  noise under secure aggregation (distributed-dp), and its plan;
- :mod:`~lhs_federated.privacy.ledger`: the site's privacy ledger on disk;
- :mod:`~lhs_federated.privacy.budget`: the site's budget check before each
  round, and the record of what each round spent;
- :mod:`~lhs_federated.privacy.site_round`: a site's training round under these rules;
- :mod:`~lhs_federated.privacy.egress`: the rules of the egress guard;
- :mod:`~lhs_federated.privacy.membership`: a membership-inference check of a
  released model.

None of these import Flower; the Flower adapters (the egress guard mod,
client-level DP strategy wrappers) live in :mod:`lhs_federated.apps`.
"""
