from __future__ import annotations

import shutil

import pytest

from lhs_federated import load_study
from lhs_federated.data.sources import load_sites
from lhs_federated.data.uci_heart import CENTRES, download_uci_heart, load_uci_heart
from lhs_federated.errors import DataError


def test_loader_reads_the_four_centres(uci_folder):
    tables = load_uci_heart(uci_folder)
    assert {k: len(v) for k, v in tables.items()} == {
        "cleveland": 303,
        "hungary": 294,
        "switzerland": 123,
        "va": 200,
    }


def test_contract_cleaning_gives_flamby_row_counts(uci_folder):
    study = load_study(None).with_overrides(
        {
            "data.source": "uci-heart",
            "data.path": str(uci_folder),
            "data.test_fraction": 0.34,
            "preprocessing.one_hot": "drop-first",
        }
    )
    sites = {s.name: s for s in load_sites(study)}
    assert sum(len(s.train.outcome) + len(s.test.outcome) for s in sites.values()) == 740
    assert {n: len(s.train.outcome) + len(s.test.outcome) for n, s in sites.items()} == {
        "cleveland": 303,
        "hungary": 261,
        "switzerland": 46,
        "va": 130,
    }
    assert sites["cleveland"].train.features.shape[1] == 13  # FLamby's 13 inputs


def test_changed_or_missing_files_are_refused(tmp_path, uci_folder):
    shutil.copytree(uci_folder, tmp_path / "uci")
    with (tmp_path / "uci" / "processed.va.data").open("a") as handle:
        handle.write("1,1,1,1,1,1,1,1,1,1,1,1,1,0\n")
    with pytest.raises(
        DataError, match=r"processed\.va\.data has MD5 .*, not the published 4249d03c"
    ):
        load_uci_heart(tmp_path / "uci")
    (tmp_path / "uci" / "processed.cleveland.data").unlink()
    with pytest.raises(
        DataError, match=r"lacks processed\.cleveland\.data.*lhs-fed data download-uci"
    ):
        load_uci_heart(tmp_path / "uci")


def test_download_checks_md5_against_a_loopback_server(tmp_path, uci_folder, http_folder):
    base_url, state = http_folder
    served = tmp_path / "served"
    shutil.copytree(uci_folder, served / "heart")
    state["dir"] = str(served)
    written = download_uci_heart(tmp_path / "out", base_url=base_url)
    assert sorted(p.name for p in written) == sorted(name for name, _ in CENTRES.values())
    assert len(load_uci_heart(tmp_path / "out")["cleveland"]) == 303

    (served / "heart" / "processed.hungarian.data").write_text("tampered\n")
    with pytest.raises(DataError, match=r"processed\.hungarian\.data returned a file with MD5"):
        download_uci_heart(tmp_path / "again", base_url=base_url)
    assert not (tmp_path / "again" / "processed.hungarian.data").exists()


def test_download_reports_unreachable_server(tmp_path):
    with pytest.raises(DataError, match=r"could not download http://127\.0\.0\.1:9/"):
        download_uci_heart(tmp_path, base_url="http://127.0.0.1:9/", timeout=2)
