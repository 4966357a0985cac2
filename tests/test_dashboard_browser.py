"""The dashboard in a real browser: Debian's Chromium driven by Selenium, headless.

While ``lhs-fed simulate`` runs a study in another process, the run page's
round counter must advance without a reload (server-sent events), the run
must end as completed with its charts, and the audit page of a copy with a
tampered ledger must say NOT INTACT. Screenshots of every page are written
to the test's temporary folder (named in the output) for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from dashboard_server import Served, free_port

from lhs_federated.governance.ledger import canonical_json

pytestmark = pytest.mark.slow

CHROMEDRIVER = shutil.which("chromedriver")
ROUNDS = 40


@pytest.fixture(scope="module")
def browser():
    if CHROMEDRIVER is None:
        pytest.fail("chromedriver not on PATH: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def test_live_run_audit_and_consortium_in_a_browser(browser, tmp_path, small_study):
    from selenium.webdriver.common.by import By

    runs = tmp_path / "runs"
    runs.mkdir()
    study = tmp_path / "study.toml"
    study.write_text(small_study.with_overrides({"rounds": ROUNDS}).to_toml())
    shots = tmp_path / "screenshots"
    shots.mkdir()
    from lhs_federated.dashboard import serve

    settings = serve.prepare(runs, port=free_port())
    base = f"http://127.0.0.1:{settings.port}"
    with Served(settings):
        command = [sys.executable, "-m", "lhs_federated", "simulate", str(study), "--quiet"]
        run = subprocess.Popen(
            [*command, "--out", str(runs / "live")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for((runs / "live" / "study.resolved.toml").is_file, timeout=120, what="the run")
            browser.get(f"{base}/")
            assert "live" in browser.find_element(By.CSS_SELECTOR, "table.runs").text
            browser.save_screenshot(str(shots / "1-runs-while-running.png"))
            browser.get(f"{base}/runs/live")
            browser.execute_script("window.notReloaded = true;")
            counter = lambda: int(browser.find_element(By.ID, "round-counter").text)  # noqa: E731
            seen = {counter()}
            status = browser.find_element(By.ID, "run-status")
            deadline = time.monotonic() + 180
            while status.text != "completed" and time.monotonic() < deadline:
                seen.add(counter())
                if len(seen) == 3:
                    browser.save_screenshot(str(shots / "2-run-page-live.png"))
                time.sleep(0.05)
            assert run.wait(timeout=60) == 0, run.stderr.read()
        finally:
            run.kill()
        wait_for(lambda: status.text == "completed", timeout=30, what="the page to say completed")
        assert browser.execute_script("return window.notReloaded === true;")
        assert len(seen - {0}) >= 2, f"the counter did not advance live: saw {sorted(seen)}"
        wait_for(lambda: counter() == ROUNDS, timeout=30, what=f"round {ROUNDS} on the page")
        wait_for(
            lambda: "Federated vs pooled" in browser.page_source,
            timeout=30,
            what="the final tables",
        )
        browser.save_screenshot(str(shots / "3-run-page-completed.png"))
        assert browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")

        browser.get(f"{base}/runs/live/audit")
        assert browser.find_element(By.ID, "verdict").text.startswith("INTACT")
        browser.save_screenshot(str(shots / "4-audit-intact.png"))

        tampered = runs / "tampered"
        shutil.copytree(runs / "live", tampered)
        ledger = tampered / "governance" / "coordinator.jsonl"
        lines = ledger.read_bytes().splitlines(keepends=True)
        record = json.loads(lines[9])
        record["data"]["examples"] = 10_000  # a site "trained on" more patients than it has
        lines[9] = canonical_json(record) + b"\n"
        ledger.write_bytes(b"".join(lines))
        browser.get(f"{base}/runs/tampered/audit")
        verdict = browser.find_element(By.ID, "verdict")
        assert verdict.text.startswith("NOT INTACT")
        assert "253, 226, 226" in verdict.value_of_css_property("background-color")  # red
        problems = browser.find_element(By.CSS_SELECTOR, "ul.problems").text
        assert "line 10 (record 9): modified" in problems
        browser.save_screenshot(str(shots / "5-audit-tampered.png"))

        browser.get(f"{base}/consortium")
        assert "site-01" in browser.find_element(By.CSS_SELECTOR, "table.consortium").text
        browser.save_screenshot(str(shots / "6-consortium.png"))
        browser.get(f"{base}/runs/live/files/../../../etc/passwd")
        assert "root:" not in browser.page_source
    print(f"screenshots in {shots}")
