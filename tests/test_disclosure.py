"""A run with small sites (issue 10): disclosure in every file, and what a reader is told.

Item 3: nothing computed on fewer rows than the minimum cell size reaches a reader.

One simulated run on a messy table of our own making with small sites (6 and 14
patients: fewer test and training rows than the cell size of 10; a site of 40
with fewer than 10 positive test cases) is scanned file by file. Every file the
run writes must have a check here, so a new output cannot skip the rule. The
report's figures are drawn from the folder's own files (sites.csv, metrics.csv,
calibration.csv and summary.json: see research/report.py), so checking those
checks the PNGs' source data; the HTML's tables are checked cell by cell.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
import sys
from pathlib import Path

import pytest

from lhs_federated import load_study, simulate
from lhs_federated.data.sources import load_sites

sys.path.insert(0, str(Path(__file__).parent))
from messy import messy_sites, write_messy_folder

CELL = 10


@pytest.fixture(scope="module")
def small_sites_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("disclosure")
    write_messy_folder(folder / "data", messy_sites((6, 14, 40, 150), seed=1))
    study = load_study(None).with_overrides(
        {
            "name": "small-sites",
            "data.source": "folder",
            "data.path": str(folder / "data"),
            "federation.min_sites": 2,
            "rounds": 4,
            "sites.min_cell_size": CELL,
        }
    )
    results = simulate(study, out_dir=folder / "run")
    truth = {}
    for site in load_sites(study):
        test, train = site.test.outcome, site.train.outcome
        truth[site.name] = {
            "n_test": len(test),
            "test_classes": (int(test.sum()), int(len(test) - test.sum())),
            "n_train": len(train),
            "train_classes": (int(train.sum()), int(len(train) - train.sum())),
        }
    return results, truth, study


def small(count: int) -> bool:
    return 0 < count < CELL


def empty(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def check_sites_csv(path, truth):
    for row in _rows(path):
        for column in ("n_train", "n_test", "positives_train", "positives_test"):
            assert row[column] == f"<{CELL}" or int(row[column]) >= CELL, (row, column)


def check_metrics_csv(path, truth):
    for row in _rows(path):
        site = truth[row["site"]]
        if row["split"] == "test" and site["n_test"] < CELL:
            assert row["value"] == "", row
        classes = site["test_classes"]
        if row["split"] == "test" and row["metric"] == "prevalence" and any(map(small, classes)):
            assert row["value"] == "", row
        if row["split"] == "train" and row["metric"] == "n":
            assert float(row["value"]) >= CELL, row


def check_comparison_csv(path, truth):
    for row in _rows(path):
        place, model = row["evaluated_at"], row["model"]
        if place in truth and truth[place]["n_test"] < CELL:
            assert row["value"] == "", row
        if model.startswith("local:") and truth[model.removeprefix("local:")]["n_train"] < CELL:
            assert row["value"] == "", row
        if place in truth and row["metric"] == "prevalence":
            assert not any(map(small, truth[place]["test_classes"])) or row["value"] == "", row


def check_cross_site_csv(path, truth):
    for row in _rows(path):
        trained_at = truth[row["trained_at"]]
        for place, value in row.items():
            if place in truth and truth[place]["n_test"] < CELL:
                assert value == "", (row["trained_at"], place)
            if place in truth or place == "all-sites":
                assert trained_at["n_train"] >= CELL or value == "", (row["trained_at"], place)


def check_calibration_csv(path, truth):
    for row in _rows(path):
        n = int(row["n"])
        positives = round(float(row["observed"]) * n)
        assert n >= CELL and not small(positives) and not small(n - positives), row


def check_summary_json(path, truth):
    summary = json.loads(path.read_text(encoding="utf-8"))
    tiny_test = [s for s, t in truth.items() if t["n_test"] < CELL]
    tiny_train = [s for s, t in truth.items() if t["n_train"] < CELL]
    for site in tiny_test:
        assert all(empty(v) for v in summary["final"]["per_site"].get(site, {}).values())
        for column, values in summary["comparison"]["per_site"][site].items():
            assert all(empty(v) for v in values.values()), (site, column)
        for metric in summary["comparison"]["cross_site"].values():
            assert all(empty(metric[local][site]) for local in metric), site
    for site in tiny_train:
        for metric in summary["comparison"]["cross_site"].values():
            assert all(empty(v) for v in metric[site].values()), site
        assert all(empty(v) for v in summary["comparison"]["all-sites"][f"local:{site}"].values())
    for model in summary["baselines"]["models"].values():
        assert model["rows"] == f"<{CELL}" or model["rows"] >= CELL


def check_report_html(path, truth):
    """Rows of the report's tables that name a small site hold no metric computed there."""
    page = path.read_text(encoding="utf-8")
    tiny = {s for s, t in truth.items() if t["n_test"] < CELL}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, flags=re.S):
        cells = [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(
            r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S)]  # fmt: skip
        if not cells or cells[0].removesuffix(" *") not in tiny:
            continue
        for cell in cells[1:]:
            assert cell in ("—", "", f"<{CELL}") or (cell.isdigit() and int(cell) >= CELL), cells


def check_text(path, truth):
    """Free text (reasons, events, ledgers) names no count below the cell size of a small site."""
    text = path.read_text(encoding="utf-8")
    for site, t in truth.items():
        counts = {t["n_test"], t["n_train"], *t["test_classes"], *t["train_classes"]}
        for count in filter(small, counts):
            pattern = rf"\b{count} (training |test )?(rows|patients|positive|negative)"
            assert not re.search(pattern, text), (path.name, site, count)


def no_patient_data(path, truth):
    """The study, versions, keys and the released model trained on sites above the cell size."""


CHECKS = {
    "sites.csv": check_sites_csv,
    "metrics.csv": check_metrics_csv,
    "comparison.csv": check_comparison_csv,
    "calibration.csv": check_calibration_csv,
    "cross_site.csv": check_cross_site_csv,
    "summary.json": check_summary_json,
    "report.html": check_report_html,
    "rounds.csv": check_text,
    "events.jsonl": check_text,
    "*.jsonl": check_text,  # ledgers and approvals
    "study.resolved.toml": no_patient_data,
    "versions.json": no_patient_data,
    "*.key": no_patient_data,
    "*.pub": no_patient_data,
    "model.npz": no_patient_data,
    "model.json": no_patient_data,
    "model.pkl": no_patient_data,
    "checkpoint.pkl": no_patient_data,
}


def test_no_output_file_shows_what_a_small_cell_computes(small_sites_run):
    results, truth, _ = small_sites_run
    assert truth["site-1"]["n_test"] < CELL and truth["site-2"]["n_train"] < CELL
    assert small(truth["site-3"]["test_classes"][0])
    files = sorted(p for p in results.out_dir.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"report.html", "comparison.csv", "cross_site.csv"}
    for path in files:
        check = CHECKS.get(path.name) or CHECKS.get(f"*{path.suffix}")
        assert check is not None, f"{path}: no disclosure check; add one to CHECKS"
        check(path, truth)


def test_the_run_states_departures_means_and_convergence_in_every_output(small_sites_run):
    """Items 1, 2 and 8: summary.json, the report and the CLI's notes say the same."""
    from lhs_federated.learning.metrics import nan_weighted_mean
    from lhs_federated.learning.site import federated_statistics, summarise_site
    from lhs_federated.results.notes import run_notes

    results, truth, study = small_sites_run
    summary = results.summary
    sites = load_sites(study)
    expected = federated_statistics(
        study, [summarise_site(s, study, min_cell_size=CELL) for s in sites]
    )
    departures = summary["preprocessing"]["departures"]
    assert departures == [d.to_json() for d in expected.departures] and departures
    assert {"site-1", "site-2"} <= set(departures[0]["withheld_at"])
    final = summary["final"]
    small = {s for s, t in truth.items() if t["n_test"] < CELL or min(t["test_classes"]) < CELL}
    assert set(final["left_out"]) == small and set(final["counted_sites"]) == set(truth) - small
    counted = final["counted_sites"]
    auroc = [final["per_site"][s]["auroc"] for s in counted]
    assert final["mean"]["auroc"] == pytest.approx(nan_weighted_mean(auroc, [1.0] * len(auroc)))
    assert summary["comparison"]["counted_sites"] == counted
    assert summary["convergence"]["line"].startswith("convergence: over the last 1 of 4 rounds")
    notes = run_notes(summary)
    assert notes[0] == final["mean_definition"] and any("depart" in n for n in notes)
    page = html.unescape((results.out_dir / "report.html").read_text(encoding="utf-8"))
    for note in notes:
        assert note in page
    assert f"{len(departures)} of {summary['preprocessing']['columns']} columns depart" in page


def test_a_deployed_runs_report_describes_the_sites_that_ran(small_sites_run, tmp_path):
    """Item 8: not the study's "four synthetic sites" when other sites ran on their own data."""
    import shutil

    from lhs_federated.research.report import write_report

    results, truth, _ = small_sites_run
    deployed = shutil.copytree(results.out_dir, tmp_path / "deployed")
    versions = json.loads((deployed / "versions.json").read_text(encoding="utf-8"))
    versions["engine"] = "deployment"  # what the coordinator of a deployment records
    (deployed / "versions.json").write_text(json.dumps(versions), encoding="utf-8")
    page = html.unescape(write_report(deployed).read_text(encoding="utf-8"))
    assert f"As run: 4 sites ({', '.join(truth)}); each site's own table" in re.sub(
        r"<[^>]+>", "", page
    )
    assert "<td class='text'>folder" not in page


def test_a_model_that_calls_everyone_the_same_is_named():
    from lhs_federated.results.notes import constant_sites, run_notes

    final = {
        "per_site": {
            "a": {"balanced_accuracy": 0.5, "accuracy": 0.8, "prevalence": 0.2},
            "b": {"balanced_accuracy": 0.71, "accuracy": 0.8, "prevalence": 0.2},
            "c": {"balanced_accuracy": None, "accuracy": 1.0, "prevalence": 0.0},
        }
    }
    assert constant_sites(final) == {"a": "calls every patient negative"}
    assert any(
        "constant at a (calls every patient negative)" in n for n in run_notes({"final": final})
    )


@pytest.mark.parametrize(
    ("auroc", "loss", "status", "says"),
    [
        ([0.70, 0.74, 0.78, 0.80, 0.82], [0.60, 0.55, 0.52, 0.50, 0.48], "improving", "rounds=10"),
        ([0.80, 0.81, 0.81, 0.812, 0.812], [0.50, 0.49, 0.49, 0.49, 0.49], "settled", "settled"),
        ([0.80, 0.82, 0.82, 0.81, 0.79], [0.50, 0.49, 0.49, 0.49, 0.495], "declining", "falling"),
    ],
)
def test_convergence_line_reads_the_last_rounds(tmp_path, auroc, loss, status, says):
    from lhs_federated.results.notes import convergence

    rounds = ["round,seconds,trained,failed,mean_auroc"]
    rounds += [f"{r},1.0,a b,,{v}" for r, v in enumerate(auroc, start=1)]
    metrics = ["round,site,split,metric,value,reason"]
    metrics += [f"{r},{s},train,loss,{v}," for r, v in enumerate(loss, start=1) for s in "ab"]
    (tmp_path / "rounds.csv").write_text("\n".join(rounds) + "\n", encoding="utf-8")
    (tmp_path / "metrics.csv").write_text("\n".join(metrics) + "\n", encoding="utf-8")
    result = convergence(tmp_path)
    assert result["status"] == status and says in result["line"], result
    assert result["line"].startswith("convergence: over the last 1 of 5 rounds")
