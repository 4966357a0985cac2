"""Shared fixtures: small studies and the real UCI Heart Disease files."""

from __future__ import annotations

import http.server
import os
import threading
from pathlib import Path

import pytest

from lhs_federated import Study, load_study

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repository; a git worktree sits one level deeper (wt/NAME).
SHARED_DATA = next(
    (p / "shared" / "data" for p in REPO.parents if (p / "shared" / "data").is_dir()),
    REPO.parent / "shared" / "data",
)

# Flower must not phone home from tests.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="session")
def uci_folder() -> Path:
    """The four processed UCI files shipped beside the repository (never downloaded)."""
    folder = SHARED_DATA / "uci-heart-disease"
    if not (folder / "processed.cleveland.data").is_file():
        pytest.fail(f"UCI Heart Disease files expected in {folder} (../shared/data)")
    return folder


@pytest.fixture(scope="session")
def small_study() -> Study:
    """Three synthetic sites, two rounds: an end-to-end federation in about a second."""
    return load_study(None).with_overrides(
        {
            "name": "small",
            "rounds": 2,
            "data.synthetic.sites": 3,
            "data.synthetic.rows_per_site": 200,
        }
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_folder():
    """A loopback HTTP server; yields (base URL of /heart/, state dict whose "dir" it serves)."""
    state: dict[str, str] = {}

    def handler(*args, **kwargs):
        return _QuietHandler(*args, directory=state["dir"], **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/heart/", state
    server.shutdown()
