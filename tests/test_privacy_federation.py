"""Privacy in whole federations: epsilon reported, budgets enforced, bad settings refused."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest

from lhs_federated import ConfigError, StudyRunError, load_study, simulate
from lhs_federated.cli import main
from lhs_federated.errors import SiteRefusal
from lhs_federated.governance.code import installed_code_hash
from lhs_federated.governance.ledger_view import StudyView
from lhs_federated.governance.privacy_anchor import check_privacy_ledger
from lhs_federated.governance.report import render_report
from lhs_federated.governance.run_audit import audit_run
from lhs_federated.governance.site_folder import SiteFolder
from lhs_federated.governance.verify import load_entries
from lhs_federated.privacy.ledger import PrivacyLedger


@pytest.fixture(scope="module")
def dp_study(small_study):
    return small_study.with_overrides(
        {"privacy.mode": "sample-dp", "privacy.epsilon": 1.0, "privacy.delta": 1e-4}
    )


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, dp_study):
    return simulate(dp_study, out_dir=tmp_path_factory.mktemp("dp") / "run")


def test_epsilon_per_site_per_round_is_reported(dp_run):
    privacy = dp_run.metrics[dp_run.metrics.split == "privacy"]
    table = privacy.pivot(index="round", columns="site", values="value")
    assert list(table.columns) == ["site-01", "site-02", "site-03"] and list(table.index) == [1, 2]
    assert (table.loc[1] > 0).all() and (table.loc[2] > table.loc[1]).all()
    assert (table.loc[2] <= 1.0).all() and (table.loc[2] > 0.9).all()  # the plan spends the target
    losses = dp_run.metrics.query("split == 'train' and metric == 'loss'")
    assert losses["value"].isna().all() and losses["reason"].str.startswith("withheld").all()
    summary = dp_run.summary["privacy"]
    assert summary["epsilon"] == pytest.approx(table.loc[2].to_dict())
    assert summary["secure_rng"] is False and "without a secure RNG" in summary["note"]


def test_epsilon_the_sites_send_reaches_both_ledgers_and_the_report(dp_run):
    """The real DP-SGD reply path: what the ClientApp sends is what both ledgers record."""
    governance = dp_run.out_dir / "governance"
    view = StudyView.from_entries(load_entries(governance / "coordinator.jsonl"))
    spent = dp_run.summary["privacy"]["epsilon"]
    assert {site: rounds[2] for site, rounds in view.epsilon().items()} == pytest.approx(spent)
    assert all(0 < rounds[1] < rounds[2] for rounds in view.epsilon().values())
    for site, total in spent.items():
        sent = load_entries(governance / "sites" / site / "ledger.jsonl")
        train = [e.data["epsilon"] for e in sent if e.data.get("message_type") == "train"]
        assert train == [view.epsilon()[site][1], view.epsilon()[site][2]]
        assert train[-1] == pytest.approx(total)
    audit = audit_run(dp_run.out_dir)
    assert audit.ok, audit.problems
    html = render_report(audit)
    assert "Privacy spent per site (epsilon, cumulative" in html
    assert "not reported" not in html


def test_each_site_keeps_a_ledger_in_the_run_folder_by_default(dp_run, dp_study):
    resolved = load_study(dp_run.out_dir / "study.resolved.toml")
    assert resolved.sites.state_dir == str((dp_run.out_dir / "site-state").resolve())
    assert dp_study.sites.state_dir is None
    for site, spent in dp_run.summary["privacy"]["epsilon"].items():
        path = dp_run.out_dir / "site-state" / site / "privacy-ledger.json"
        ledger = PrivacyLedger.load(path, site)
        assert ledger.studies[resolved.hash].epsilon == pytest.approx(spent)
        assert [r.round for r in ledger.studies[resolved.hash].rounds] == [1, 2]


def test_private_runs_are_reproducible(tmp_path, dp_run, dp_study):
    again = simulate(dp_study, out_dir=tmp_path / "again")
    pd.testing.assert_frame_equal(again.metrics, dp_run.metrics)


def test_budget_refusal_reaches_the_coordinator(tmp_path, dp_study):
    # site-03 takes the most steps per round: it alone would pass a budget of 1.2 in round 2
    study = dp_study.with_overrides({"sites.epsilon_budget": 1.2})
    reason = (
        r"site-03: refused: site 'site-03' refused: round 2 of study 'small' would bring the "
        r"site's total over all studies to epsilon 1\.2\d+, above its budget 1\.2"
    )
    with pytest.raises(StudyRunError, match=r"round 2: 2 of 3 sites returned .*" + reason):
        simulate(study, out_dir=tmp_path / "stops")
    failure = json.loads((tmp_path / "stops" / "failure.json").read_text())
    assert "above its budget" in failure["error"]
    going_on = simulate(
        study.with_overrides({"federation.min_sites": 2}), out_dir=tmp_path / "goes-on"
    )
    rounds = pd.read_csv(going_on.out_dir / "rounds.csv", keep_default_na=False)
    assert rounds["trained"].tolist() == ["site-01 site-02 site-03", "site-01 site-02"]
    assert pd.Series(rounds["failed"][1]).str.contains(reason).all()


def test_a_sites_budget_persists_across_studies(tmp_path, dp_study):
    shared = {"sites.state_dir": str(tmp_path / "state"), "sites.epsilon_budget": 1.5}
    simulate(dp_study.with_overrides(shared), out_dir=tmp_path / "first")
    second = dp_study.with_overrides({**shared, "seed": 7, "rounds": 1})
    with pytest.raises(StudyRunError, match=r"round 1: 0 of 3 sites .*above its budget 1\.5"):
        simulate(second, out_dir=tmp_path / "second")


def test_a_small_site_refuses_and_the_run_goes_on_when_min_sites_allows(tmp_path, small_study):
    study = small_study.with_overrides(
        {"rounds": 1, "privacy.min_train_rows": 100, "federation.min_sites": 2}
    )
    results = simulate(study, out_dir=tmp_path / "run")
    rounds = pd.read_csv(results.out_dir / "rounds.csv")
    assert rounds["trained"].tolist() == ["site-01 site-03"]
    assert (
        "site-02: refused: site 'site-02' refused: it has fewer training rows than 100"
        in (rounds["failed"][0])
    )


@pytest.mark.parametrize("clipping", ["server-fixed", "client-fixed"])
def test_client_level_dp_reports_the_federations_epsilon(tmp_path, small_study, clipping):
    study = small_study.with_overrides(
        {"privacy.mode": "client-dp", "privacy.epsilon": 3.0, "privacy.client.clipping": clipping}
    )
    results = simulate(study, out_dir=tmp_path / "run")
    privacy = results.summary["privacy"]
    spent = set(privacy["epsilon"].values())
    assert len(spent) == 1 and 2.5 < spent.pop() <= 3.0
    assert privacy["noise_multiplier"] > 1 and privacy["clipping"] == clipping
    rows = results.metrics[results.metrics.split == "privacy"]
    assert len(rows) == 2 * 3 and rows.groupby("round")["value"].nunique().eq(1).all()


def test_client_level_dp_noise_is_seeded_in_simulation_only(tmp_path, small_study):
    """Flower draws its noise from numpy's global generator: unseeded, the README's
    client-dp command gave AUROC 0.41 to 0.70 for one seed (and a diverged site 1 in 4)."""
    import numpy as np

    from lhs_federated.apps.client_dp import simulated_noise

    study = small_study.with_overrides({"privacy.mode": "client-dp", "privacy.epsilon": 3.0})
    first = simulate(study, out_dir=tmp_path / "first")
    again = simulate(study, out_dir=tmp_path / "again")
    other = simulate(study.with_overrides({"seed": 11}), out_dir=tmp_path / "other")
    pd.testing.assert_frame_equal(again.metrics, first.metrics)
    assert not other.metrics["value"].equals(first.metrics["value"])
    draws = []
    for simulated in (True, True, False, False):
        before = np.random.get_state()[1].copy()
        with simulated_noise(study, 1, simulated=simulated):
            draws.append(np.random.normal(size=3))
        if simulated:  # the generator others draw from is left as it was
            assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(draws[0], draws[1])  # a simulation replays its noise
    assert not np.array_equal(draws[2], draws[3])  # a deployed coordinator never does


CLIENT_DP = {"privacy.mode": "client-dp"}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"privacy.epsilon": 1.0}, r"privacy\.epsilon = 1 is set but privacy\.mode is 'none'"),
        ({"privacy.mode": "sample-dp"}, r"'sample-dp' needs privacy\.epsilon"),
        ({"privacy.epsilon": 0.0, "privacy.mode": "sample-dp"}, r"epsilon must be a positive"),
        ({"privacy.delta": 1.0}, r"privacy\.delta must be in \(0, 1\).*promises nothing"),
        (
            {**CLIENT_DP, "privacy.epsilon": 3.0, "strategy.name": "fedmedian"},
            r"strategy 'fedmedian' aggregates differently, so the guarantee would be wrong",
        ),
        (
            {**CLIENT_DP, "privacy.epsilon": 3.0, "strategy.name": "fedadam"},
            r"strategy 'fedadam' aggregates differently",
        ),
        (
            {
                **CLIENT_DP,
                "privacy.client.clipping": "server-adaptive",
                "privacy.client.noise_multiplier": 1.0,
            },
            r"needs an explicit privacy\.client\.clipped_count_stddev",
        ),
        (
            {
                **CLIENT_DP,
                "privacy.client.clipping": "client-adaptive",
                "privacy.client.noise_multiplier": 1.0,
                "privacy.client.clipped_count_stddev": 0.4,
            },
            r"noise_multiplier \(1\) below 2 x clipped_count_stddev \(0\.4\)",
        ),
        (
            {**CLIENT_DP, "privacy.epsilon": 1.0, "privacy.client.noise_multiplier": 0.5},
            r"noise_multiplier = 0\.5 spends epsilon \d+\.\d+ over the study's 2 rounds",
        ),
        (CLIENT_DP, r"fixed clipping needs privacy\.epsilon"),
        (
            {"privacy.mode": "sample-dp", "privacy.epsilon": 1.0, "strategy.name": "qfedavg"},
            r"'qfedavg' weights sites by their training loss",
        ),
        (
            {
                **CLIENT_DP,
                "privacy.client.clipping": "server-adaptive",
                "privacy.client.noise_multiplier": 1.0,
                "privacy.client.clipped_count_stddev": 2.0,
                "federation.min_sites": 2,
            },
            r"adaptive clipping with federation\.min_sites would aggregate rounds",
        ),
    ],
)
def test_bad_privacy_settings_are_refused_at_load(small_study, overrides, match):
    with pytest.raises(ConfigError, match=match):
        small_study.with_overrides(overrides)


def test_cli_prints_epsilon_and_the_rng_note(tmp_path, capsys):
    code = main(
        [
            "simulate",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "rounds=1",
            "--set",
            "data.synthetic.sites=2",
            "--set",
            "data.synthetic.rows_per_site=100",
            "--set",
            "privacy.mode=sample-dp",
            "--set",
            "privacy.epsilon=2.0",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "ε" in out and "Opacus ran without a secure RNG" in out


def readme_privacy_commands() -> list[list[str]]:
    """The ``lhs-fed`` commands of the README's privacy section, as argument lists."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Privacy") :]
    block = section[
        section.index("```bash") + len("```bash") : section.index(
            "```", section.index("```bash") + 7
        )
    ]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.startswith("lhs-fed ")]


def test_readme_privacy_commands_run(tmp_path, monkeypatch):
    commands = readme_privacy_commands()
    assert len(commands) == 4  # sample-dp twice, client-dp, distributed-dp
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    for k, argv in enumerate(commands):
        argv = [
            a.replace("sites.state_dir=site-state", f"sites.state_dir={tmp_path / 'state'}")
            for a in argv
        ]
        quick = ["--set", "rounds=1", "--quiet", "--out", str(tmp_path / f"run{k}")]
        assert main([*argv, *quick]) == 0
    assert (tmp_path / "state" / "site-01" / "privacy-ledger.json").is_file()


def test_a_reset_privacy_ledger_is_detected_by_the_signed_site_ledger(tmp_path, dp_study):
    """Moving the privacy ledger away, or restoring an older copy, does not reset a budget."""

    folders, state = tmp_path / "sites", tmp_path / "state"
    study = dp_study.with_overrides(
        {
            "rounds": 1,
            "governance.preapproved": False,
            "governance.site_folders": str(folders),
            "sites.state_dir": str(state),
        }
    )
    for name in ("site-01", "site-02", "site-03"):
        SiteFolder.init(folders / name, name)
    for seed in (1, 2, 3):
        again = study.with_overrides({"seed": seed})
        for name in ("site-01", "site-02", "site-03"):
            SiteFolder.open(folders / name).approve(
                again.hash, installed_code_hash(), study_name="s", by="dpo", reason="IRB"
            )
    simulate(study.with_overrides({"seed": 1}), out_dir=tmp_path / "first", report=False)
    ledger = state / "site-02" / "privacy-ledger.json"
    older = ledger.read_bytes()  # after one study
    simulate(study.with_overrides({"seed": 2}), out_dir=tmp_path / "second", report=False)
    ledger.rename(tmp_path / "moved.json")
    with pytest.raises(
        StudyRunError,
        match=r"site-02' refused: its privacy ledger '.*site-02/privacy-ledger\.json' is "
        r"missing, but its signed ledger '.*site-02/ledger\.jsonl' records 2 private "
        r"round\(s\) released",
    ):
        simulate(study.with_overrides({"seed": 3}), out_dir=tmp_path / "third", report=False)
    ledger.write_bytes(older)  # an older copy: one study short (the gate's own check)
    site = SiteFolder.open(folders / "site-02", with_key=False)
    with pytest.raises(
        SiteRefusal,
        match=r"its privacy ledger .* holds 0 round\(s\) of study \w{12}… \(epsilon 0\.0000\), "
        r"but its signed ledger .* records 1 released",
    ):
        check_privacy_ledger("site-02", site.folder, site.public_key, ledger)
