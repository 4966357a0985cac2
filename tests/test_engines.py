"""The Ray simulation engine gives exactly the in-process engine's results."""

from __future__ import annotations

import pandas as pd
import pytest

from lhs_federated import simulate


@pytest.mark.slow
def test_ray_and_inprocess_engines_agree(tmp_path, small_study):
    inprocess = simulate(small_study, backend="inprocess", out_dir=tmp_path / "inprocess")
    ray = simulate(small_study, backend="ray", out_dir=tmp_path / "ray")
    key = ["round", "site", "split", "metric"]
    pd.testing.assert_frame_equal(
        inprocess.metrics.sort_values(key).reset_index(drop=True),
        ray.metrics.sort_values(key).reset_index(drop=True),
    )
    assert inprocess.summary["model"]["arrays_sha256"] == ray.summary["model"]["arrays_sha256"]
