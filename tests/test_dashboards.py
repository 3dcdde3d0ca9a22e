"""The sweep report: built from MLflow, self-contained, and visible in the MLflow UI in Chromium."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from dashboards.__main__ import report_url
from pipeline import track
from pipeline.__main__ import main
from tests.helpers import TINY_SWEEP

pytestmark = pytest.mark.slow  # real Ray, DeepSpeed engines or processes

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180  # a loaded 2-core runner takes its time to import and start the server
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("mlflow server did not become healthy in 180 s")
            time.sleep(1)
    yield url
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:  # its workers ignored SIGTERM: not what the test is about
        server.kill()
        server.wait()


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
def test_report_is_reachable_and_visible_in_the_mlflow_ui(mlflow_server, write_spec, local_ray, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    sweep = TINY_SWEEP.replace("methods:\n", "methods:\n  - name: lr_lora\n    hparams: {r: 4}\n  - name: lora_shift\n    hparams: {r: 4}\n")
    assert main(["run", str(write_spec(sweep)), "--tracking-uri", mlflow_server]) == 0
    run = track.latest_sweep_run(mlflow_server, "tiny")
    report = track.read_artifact_text(mlflow_server, run.info.run_id, "report.html")
    assert "<table" in report and "<svg" in report
    for section in ("Accuracy vs trainable parameters", "Efficiency", "Training loss", "Stable rank by depth", "Singular-value spectra", "Learned φ curves", "Shift maps"):
        assert f"<h2>{section}</h2>" in report, section
    assert "http://" not in report.replace("http://www.w3.org", "")  # self-contained: no CDN, no links out

    driver = browser()
    try:
        driver.get(report_url(mlflow_server, run))
        wait = WebDriverWait(driver, 60)
        frame = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
        driver.switch_to.frame(frame)
        table = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "table")))
        figure = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "figure svg")))
        assert "lora" in table.text and "arc_easy" in table.text
        assert figure.size["width"] > 200 and figure.size["height"] > 100
        driver.switch_to.default_content()
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    finally:
        driver.quit()
