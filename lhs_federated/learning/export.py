"""Releasing a trained model: arrays, preprocessing, a scikit-learn estimator.

The released model folder holds ``model.npz`` (the arrays), ``model.json``
(family, input columns, preprocessing statistics, study hash) and, for
logistic regression, ``model.pkl``: a fitted scikit-learn
``LogisticRegression`` on the preprocessed inputs, so the model can be used
with the tools clinicians' data teams already know. :class:`ReleasedModel`
applies the whole chain (contract encoding, imputation, scaling, model) to a
raw table.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from lhs_federated.data.encoding import encode_features, encoded_feature_names
from lhs_federated.data.statistics import Standardizer
from lhs_federated.data.validation import validate_table
from lhs_federated.learning.models import build_model
from lhs_federated.learning.parameters import set_arrays
from lhs_federated.learning.site import own_standardizer
from lhs_federated.learning.training import predict_proba
from lhs_federated.study import Study, read_resolved_study


def to_sklearn(arrays: dict[str, np.ndarray]) -> LogisticRegression:
    """A fitted ``LogisticRegression`` with our logistic model's coefficients.

    Raises
    ------
    ValueError
        If ``arrays`` are not a logistic regression's (one weight row, one bias).
    """
    weight, bias = arrays.get("linear.weight"), arrays.get("linear.bias")
    if weight is None or bias is None or weight.shape[0] != 1:
        raise ValueError(f"not a logistic regression's arrays: {sorted(arrays)}")
    estimator = LogisticRegression()
    estimator.classes_ = np.array([0, 1])
    estimator.coef_ = weight.astype(np.float64).reshape(1, -1)
    estimator.intercept_ = bias.astype(np.float64).reshape(1)
    estimator.n_features_in_ = weight.shape[1]
    estimator.n_iter_ = np.array([0], dtype=np.int32)
    return estimator


def save_model(
    folder: Path, study: Study, arrays: dict[str, np.ndarray], standardizer: Standardizer | None
) -> dict[str, str]:
    """Write the released model; return each file's SHA-256.

    ``standardizer`` is ``None`` under per-site scaling: each site then scales
    with its own statistics when it applies the model.
    """
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "model.npz", **arrays)
    description = {
        "family": study.model.name,
        "model": {"hidden_layers": list(study.model.hidden_layers), "dropout": study.model.dropout},
        "study": study.name,
        "study_hash": study.hash,
        "contract": study.contract.name,
        "features": encoded_feature_names(study.contract, study.preprocessing.one_hot),
        "one_hot": study.preprocessing.one_hot,
        "scaling": study.preprocessing.scaling,
        "mean": None if standardizer is None else standardizer.mean.tolist(),
        "scale": None if standardizer is None else standardizer.scale.tolist(),
        "threshold": study.evaluation.threshold,
    }
    (folder / "model.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    if study.model.name == "logistic":
        with (folder / "model.pkl").open("wb") as handle:
            pickle.dump(to_sklearn(arrays), handle)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@dataclass(frozen=True)
class ReleasedModel:
    """A released model applied end to end to raw tables."""

    study: Study
    arrays: dict[str, np.ndarray]
    standardizer: Standardizer | None

    @classmethod
    def load(cls, run_dir: str | Path) -> ReleasedModel:
        """Load the model of a run folder (its ``model/`` and resolved study)."""
        run_dir = Path(run_dir)
        study = read_resolved_study(run_dir / "study.resolved.toml")
        description = json.loads((run_dir / "model" / "model.json").read_text(encoding="utf-8"))
        with np.load(run_dir / "model" / "model.npz") as npz:
            arrays = {name: npz[name] for name in npz.files}
        standardizer = None
        if description["mean"] is not None:
            standardizer = Standardizer(
                np.asarray(description["mean"]), np.asarray(description["scale"])
            )
        return cls(study, arrays, standardizer)

    def predict_proba(self, table: pd.DataFrame, *, source: str = "table") -> np.ndarray:
        """Predicted risk for each row of a raw table meeting the study's contract.

        Under per-site scaling the table's own rows give the scaling statistics,
        as they did at each site during the study. Rows with a missing value
        get NaN unless the contract imputes missing values.

        Raises
        ------
        DataError
            If the table does not meet the contract.
        """
        contract = self.study.contract
        validate_table(table, contract, file=source, with_outcome=False).raise_for_errors()
        features = encode_features(table, contract, self.study.preprocessing.one_hot)
        standardizer = self.standardizer or own_standardizer(self.study, features)
        model = build_model(self.study.model, features.shape[1], seed=self.study.seed)
        set_arrays(model, self.arrays)
        probability = predict_proba(model, standardizer.transform(features))
        if contract.missing != "impute":
            probability[np.isnan(features).any(axis=1)] = np.nan
        return probability
