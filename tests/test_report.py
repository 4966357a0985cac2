"""The self-contained HTML report of a run, checked by parsing it."""

from __future__ import annotations

import base64
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from lhs_federated import simulate
from lhs_federated.cli import main


class Page(HTMLParser):
    """Headings, images, table cells and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self.external: list[str] = []
        self._tag: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("href", "src"):
            value = attrs.get(key) or ""
            if value.startswith(("http:", "https:", "//")) or (key == "src" and tag == "script"):
                self.external.append(value)

    def handle_endtag(self, tag):
        self._tag = None

    def handle_data(self, data):
        if self._tag in ("h1", "h2", "h3"):
            self.headings.append(data.strip())
        elif self._tag in ("td", "th"):
            self.cells.append(data.strip())


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, small_study):
    return simulate(small_study, out_dir=tmp_path_factory.mktemp("report") / "run")


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_run_report_is_self_contained_with_every_section(reported_run, small_study):
    page = parse(reported_run.out_dir / "report.html")
    assert page.headings[0] == "small: federated study report"
    for section in ("Study", "Data per site", "Results", "Rounds", "Reproducibility"):
        assert section in page.headings
    assert "Federated vs pooled vs local-only (test splits)" in page.headings
    assert not page.external  # nothing fetched from elsewhere
    # sites, comparison, cross-site, convergence, and calibration unless every bin is small
    calibrated = (reported_run.out_dir / "calibration.csv").read_text().count("\n") > 1
    assert len(page.images) == 4 + calibrated
    assert calibrated or "No calibration curve: every bin" in (
        reported_run.out_dir / "report.html"
    ).read_text(encoding="utf-8")
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix) :])[:8] == b"\x89PNG\r\n\x1a\n"
    for expected in ("site-01", "site-03", "mean", "1.42.0", str(small_study.seed), "fedavg"):
        assert expected in page.cells
    auroc = reported_run.summary["comparison"]["mean"]["pooled"]["auroc"]
    assert f"{auroc:.3f}" in page.cells


def test_cli_report_rewrites_and_names_bad_folders(reported_run, tmp_path, capsys):
    (reported_run.out_dir / "report.html").unlink()
    assert main(["report", str(reported_run.out_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert parse(reported_run.out_dir / "report.html").headings[0].startswith("small")
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no completed run (summary.json) or sweep" in capsys.readouterr().err


def test_importing_the_package_loads_no_plotting_library():
    code = "import sys, lhs_federated; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
