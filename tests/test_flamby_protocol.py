"""FLamby's Fed-Heart-Disease protocol and the lhs-native one, on the real UCI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from lhs_federated import load_study, simulate
from lhs_federated.data.encoding import encoded_feature_names
from lhs_federated.data.sources import load_sites
from lhs_federated.data.uci_heart import load_uci_heart
from lhs_federated.learning.site import predict_at_site, score_predictions, site_standardizer
from lhs_federated.research.baselines import POOLED, pooled_training_rows, train_baseline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flamby(uci_folder):
    path = REPO / "simulations" / "heart_disease_flamby.toml"
    return load_study(path).with_overrides({"data.path": str(uci_folder)})


def flamby_split(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's own procedure (flamby/datasets/fed_heart_disease/dataset.py)."""
    df = table.drop(columns=["slope", "ca", "thal"]).dropna().apply(pd.to_numeric)
    labels = (df["num"] > 0).astype(int)
    stratify = labels if all((labels == v).sum() > 2 for v in (0, 1)) else None
    train, test = train_test_split(
        np.arange(len(df)),
        test_size=1.0 - 0.66,
        train_size=0.66,
        random_state=43,
        shuffle=True,
        stratify=stratify,
    )
    return df.iloc[np.sort(train)]["age"].to_numpy(), df.iloc[np.sort(test)]["age"].to_numpy()


def test_split_and_normalisation_are_flambys(flamby, uci_folder):
    sites = {s.name: s for s in load_sites(flamby)}
    assert {n: (len(s.train.outcome), len(s.test.outcome)) for n, s in sites.items()} == {
        "cleveland": (199, 104),
        "hungary": (172, 89),
        "switzerland": (30, 16),
        "va": (85, 45),
    }
    raw = load_uci_heart(uci_folder)
    age = 0  # the first column of the raw table and of the encoded matrix
    for name, site in sites.items():
        train_age, test_age = flamby_split(raw[name])
        np.testing.assert_array_equal(site.train.features[:, age], train_age)
        np.testing.assert_array_equal(site.test.features[:, age], test_age)
        scaled = site_standardizer(flamby, site, None).transform(site.train.features)
        spread = site.train.features.std(axis=0, ddof=1)  # torch's std(), as FLamby
        varying = spread > 0
        np.testing.assert_allclose(scaled[:, varying].std(axis=0, ddof=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-5)
    assert sites["cleveland"].train.features.shape[1] == 13


def test_flamby_study_smoke(tmp_path, flamby):
    study = flamby.with_overrides(
        {"rounds": 2, "training.steps": 10, "baselines.epochs": 1, "strategy.name": "fedavg-ft"}
    )
    results = simulate(study, out_dir=tmp_path / "run", report=False)
    comparison = results.summary["comparison"]
    assert list(comparison["per_site"]) == ["cleveland", "hungary", "switzerland", "va"]
    assert results.summary["baselines"]["models"]["pooled"]["steps"] == 1 * 122  # ceil(486/4)
    assert results.summary["baselines"]["models"]["pooled"]["optimizer"] == "adam"
    assert 0.5 < comparison["all-sites"]["federated"]["auroc"] <= 1.0


def test_lhs_native_study_imputes_instead_of_dropping(uci_folder):
    study = load_study(REPO / "simulations" / "heart_disease_lhs.toml").with_overrides(
        {"data.path": str(uci_folder)}
    )
    sites = {s.name: s for s in load_sites(study)}
    assert sum(len(s.train.outcome) + len(s.test.outcome) for s in sites.values()) == 920
    chol = encoded_feature_names(study.contract, study.preprocessing.one_hot).index("chol")
    swiss = np.vstack([sites["switzerland"].train.features, sites["switzerland"].test.features])
    assert np.isnan(swiss[:, chol]).all()  # cholesterol 0 = not measured


def test_validation_split_leaves_test_rows_untouched(flamby):
    tuned = flamby.with_overrides({"data.evaluate_on": "validation"})
    for plain, held in zip(load_sites(flamby), load_sites(tuned), strict=True):
        assert len(held.train.outcome) + len(held.test.outcome) == len(plain.train.outcome)
        both = np.vstack([held.train.features, held.test.features])
        assert sorted(map(tuple, both)) == sorted(map(tuple, plain.train.features))
        assert len(held.test.outcome) == int(np.ceil(0.2 * len(plain.train.outcome)))


def test_pooled_rows_are_normalised_as_flambys_pooled_dataset(flamby, uci_folder):
    """FedHeartDisease(pooled=True) standardises with all centres' training rows together."""
    sites = load_sites(flamby)
    standardizers = {s.name: site_standardizer(flamby, s, None) for s in sites}
    pooled_x, pooled_y = pooled_training_rows(flamby, sites, standardizers)
    raw = load_uci_heart(uci_folder)
    train_age = np.concatenate([flamby_split(raw[s.name])[0] for s in sites])
    expected = (train_age - train_age.mean()) / train_age.std(ddof=1)  # torch's std()
    np.testing.assert_allclose(pooled_x[:, 0], expected, rtol=1e-5, atol=1e-6)
    assert len(pooled_y) == 486
    per_site = flamby.with_overrides({"baselines.pooled_scaling": "sites"})
    by_site, _ = pooled_training_rows(per_site, sites, standardizers)
    assert not np.allclose(by_site[:, 0], expected, atol=1e-3)  # the step that differed


@pytest.mark.slow
def test_pooled_row_reproduces_flambys_anchor(flamby, uci_folder):
    """Seed 42's pooled model at the four centres, beside FLamby's published row."""
    published = pd.read_csv(
        uci_folder.parent / "flamby-fed-heart-disease-results" / "heart_seed42.csv"
    )
    rows = published[
        (published["Method"] == "Pooled Training") & (published["Test"] != "Pooled Test")
    ]
    study = flamby.with_overrides({"seed": 42})
    sites = load_sites(study)
    standardizers = {s.name: site_standardizer(study, s, None) for s in sites}
    x, y = pooled_training_rows(study, sites, standardizers)
    model = train_baseline(study, POOLED, x, y, federation_steps=0)
    accuracy = [
        score_predictions(
            study,
            s.test.outcome,
            predict_at_site(study, model.arrays, s.test.features, standardizers[s.name]),
        ).values["accuracy"]
        for s in sites
    ]
    # FLamby's pooled row: 0.739 at seed 42, 0.735 (SD 0.003) over seeds 42-46.
    assert abs(np.mean(accuracy) - rows["Metric"].mean()) < 0.006
