"""Every kind of change to a finished simulated run is reported exactly, and nothing else.

The deployed run gets the same suite in tests/test_deployment.py.
"""

from __future__ import annotations

import pytest
from audit_mutations import KINDS, run_mutations, summarise

from lhs_federated import simulate
from lhs_federated.governance.keys import write_key_pair
from lhs_federated.governance.run_audit import audit_run

SITES = ("site-01", "site-02", "site-03")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return write_key_pair(folder / "coordinator.key"), folder / "coordinator.key"


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_study, published):
    return simulate(
        small_study, out_dir=tmp_path_factory.mktemp("runs") / "run", coordinator_key=published[1]
    ).out_dir


def test_the_untouched_run_is_intact_and_pinned_by_the_sites(run):
    audit = audit_run(run)
    assert audit.ok, audit.problems
    assert audit.key_trust.endswith("the key the sites' ledgers record")


def test_every_mutation_is_reported_exactly(run, tmp_path, published):
    sites = {site: run / "governance" / "sites" / site / "ledger.jsonl" for site in SITES}
    outcomes = run_mutations(run, sites, tmp_path, published_key=published[0])
    report = summarise(outcomes)
    print(report)  # the figure for the closing note
    assert {o.mutation.kind for o in outcomes} == set(KINDS)
    assert all(o.exact for o in outcomes), report
