"""The Flower App bundle (FAB) a deployed study runs, built the same way everywhere.

A deployed study's FAB holds only a ``pyproject.toml`` naming the ServerApp and
ClientApp of the *installed* lhs-federated package: no code travels with it.
Flower's FAB build is deterministic, so the coordinator and every site compute
the same bundle, and the same SHA-256, from the same lhs-federated version. A
site approves that hash (its "code version") together with the study hash; a
bundle carrying anything else has another hash and is refused at the site
before Flower writes or imports any of it.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

import tomli_w
from flwr.cli.build import build_fab_from_files

from lhs_federated.apps import run_config

SERVER_APP = "lhs_federated.apps.server_app:app"
CLIENT_APP = "lhs_federated.apps.client_app:app"


def bundle_pyproject(version: str | None = None) -> dict:
    """The bundle's ``pyproject.toml`` for an lhs-federated version (default: installed)."""
    version = version or metadata.version("lhs-federated")
    return {
        "project": {
            "name": "lhs-federated-study",
            "version": version,
            "description": "A federated study run by the installed lhs-federated package",
            "license": "Apache-2.0",
            "dependencies": [f"lhs-federated=={version}"],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "lhs-federated",
                    "components": {"serverapp": SERVER_APP, "clientapp": CLIENT_APP},
                    "config": {
                        run_config.STUDY_KEY: "",
                        run_config.OUT_DIR_KEY: "",
                        run_config.ENGINE_KEY: run_config.DEPLOYMENT,
                        run_config.RESUME_KEY: False,
                        run_config.EXPECTED_SITES_KEY: 0,
                        run_config.LEDGER_KEY: "",
                        run_config.SIMULATED_SITES: "",
                        run_config.LOOP_TASK_KEY: "",
                    },
                }
            }
        },
    }


def build_bundle(version: str | None = None) -> bytes:
    """The FAB bytes, via Flower's own (deterministic) builder."""
    pyproject = tomli_w.dumps(bundle_pyproject(version)).encode("utf-8")
    fab, _ = build_fab_from_files({"pyproject.toml": pyproject})
    return fab


def bundle_hash(version: str | None = None) -> str:
    """SHA-256 of the FAB: the code version a site approves."""
    return hashlib.sha256(build_bundle(version)).hexdigest()


def write_bundle_dir(folder: Path, version: str | None = None) -> Path:
    """Write the bundle's source folder (for ``flwr run FOLDER``); return it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        tomli_w.dumps(bundle_pyproject(version)), encoding="utf-8"
    )
    return folder
