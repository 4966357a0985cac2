"""What governance costs: ledger appends, verification, and the site's check per message.

Prints (medians over --repeats) and writes benchmarks/results/governance_costs.json:
- append: ms per signed, fsynced record, for a small record and for a study-started-sized one;
- verify: ms per record when verifying a 1000-record ledger (and a 50-record one in total);
- site check: ms the ClientApp's governance mod adds per message (open the site folder, verify
  the approvals registry, check, record the reply), measured directly;
- a whole study (the default study, in-process): seconds, records written, and the time spent
  in governance code (the coordinator's ledger hooks and the sites' checks and records, timed
  by wrapping them for the run).

    python benchmarks/governance_costs.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lhs_federated import load_study, simulate
from lhs_federated.apps import site_governance
from lhs_federated.apps.coordinator_audit import CoordinatorAudit
from lhs_federated.governance.code import installed_code_hash
from lhs_federated.governance.ledger import Ledger
from lhs_federated.governance.site_folder import SentMessage, SiteFolder
from lhs_federated.governance.verify import load_entries, verify_ledger
from lhs_federated.results.writer import versions


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def append_costs(folder: Path, n: int = 200) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    ledger = Ledger.open(folder / "append.jsonl", key, role="coordinator", owner="coordinator")
    small = {"site": "site-01", "stage": "train", "round": 3, "content_hash": "0" * 64}
    large = {"study": load_study(None).to_plain(), "participants": [f"site-{i}" for i in range(8)]}
    return {
        "append_small_ms": median_ms(lambda: ledger.append("site-reply", small), n),
        "append_study_started_ms": median_ms(lambda: ledger.append("study-started", large), 20),
        "small_record_bytes": len((folder / "append.jsonl").read_bytes().splitlines()[1]),
    }


def verify_costs(folder: Path, repeats: int) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    for n in (50, 1000):
        ledger = Ledger.open(folder / f"v{n}.jsonl", key, role="site", owner="site-01")
        for i in range(n - 1):
            ledger.append("message-sent", {"i": i, "content_hash": "0" * 64})
    per_1000 = median_ms(lambda: verify_ledger(folder / "v1000.jsonl", key.public_key()), repeats)
    return {
        "verify_ms_per_record": per_1000 / 1000,
        "verify_50_records_ms": median_ms(
            lambda: verify_ledger(folder / "v50.jsonl", key.public_key()), repeats * 5
        ),
    }


def site_check_cost(folder: Path, n: int = 100) -> float:
    """ms of what the governance mod does per message, on a site with a few approvals."""
    site = SiteFolder.init(folder / "site-01", "site-01")
    study, code = hashlib.sha256(b"s").hexdigest(), installed_code_hash()
    for k in range(5):
        site.approve(
            hashlib.sha256(bytes([k])).hexdigest(), code, study_name="x", by="a", reason="b"
        )
    site.approve(study, code, study_name="x", by="a", reason="b")

    def one_message() -> None:
        opened = SiteFolder.open(folder / "site-01", site="site-01")
        approval = opened.check(study, code)
        opened.record_sent(
            SentMessage(
                1, "m", "train", 1, study, "ok", "0" * 64, 500, approval=approval.record_hash
            )
        )

    return median_ms(one_message, n)


@contextmanager
def governance_timer():
    """Accumulate the time spent in the governance hooks while the block runs."""
    spent, depth = [0.0], [0]
    targets = [
        (CoordinatorAudit, name)
        for name in ("open", "sent", "received", "aggregated", "evaluated", "finish")
    ]
    targets += [(site_governance, "simulated_governance"), (site_governance, "record_task")]
    targets += [(SiteFolder, "check")]
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]

    def wrap(function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            depth[0] += 1
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # the close stage runs site hooks inside finish()
                    spent[0] += time.perf_counter() - start

        return timed

    for owner, name, function in originals:
        setattr(owner, name, wrap(function))
    try:
        yield spent
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def study_cost(folder: Path, repeats: int) -> dict[str, float]:
    logging.getLogger("flwr").setLevel(logging.WARNING)
    times, governance = [], []
    for k in range(repeats):
        with governance_timer() as spent:
            start = time.perf_counter()
            results = simulate(None, out_dir=folder / f"run-{k}")
            times.append(time.perf_counter() - start)
        governance.append(spent[0])
    out = results.out_dir / "governance"
    coordinator = len(load_entries(out / "coordinator.jsonl"))
    site_records = sum(len(load_entries(p)) for p in out.glob("sites/*/ledger.jsonl"))
    return {
        "study_seconds": statistics.median(times),
        "study_governance_seconds": statistics.median(governance),
        "study_governance_share": statistics.median(
            g / t for g, t in zip(governance, times, strict=True)
        ),
        "coordinator_records": coordinator,
        "site_records": site_records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = {**append_costs(folder), **verify_costs(folder, args.repeats)}
        figures["site_check_and_record_ms_per_message"] = site_check_cost(folder)
        figures.update(study_cost(folder, args.repeats))
    width = max(map(len, figures))
    for name, value in figures.items():
        print(
            f"{name:<{width}}  {value:.3f}"
            if isinstance(value, float)
            else f"{name:<{width}}  {value}"
        )
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "governance_costs.json").write_text(
        json.dumps({"figures": figures, "versions": versions()}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
