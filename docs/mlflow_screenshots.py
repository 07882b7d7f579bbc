"""Screenshots of the MLflow UI for the README: the experiment's runs page (Model-training mode, the nested job runs
under each invocation) and a registered model's page, taken with headless Chromium through Selenium (Debian:
apt-get install chromium chromium-driver; pip install selenium).

    python docs/mlflow_screenshots.py RESULTS_FOLDER DATASET [--out docs/figures]

for example after `snakemake -d /tmp/tiny --configfile tests/config/tiny.yaml`:
`python docs/mlflow_screenshots.py /tmp/tiny/results tiny`. The runs page at 100 subjects (the data half of
`bench/bench_scale.py`'s cohort, README): `--runs-png mlflow-runs-100-subjects.png`.

It serves RESULTS_FOLDER/mlflow.db with `mlflow server` on 127.0.0.1 for the time of the screenshots.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def open_browser(size=(1600, 1000)):
    """Headless Chromium driven by Selenium (the system's chromedriver: apt-get install chromium-driver)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def click_all(browser, css: str) -> int:
    """Click every element matching `css` (the runs table's expanders, the assistant's close button)."""
    found = browser.find_elements("css selector", css)
    for element in found:
        browser.execute_script("arguments[0].click();", element)
    return len(found)


def links(browser, kind: str) -> list:
    """The page's links to runs or models (run names shown: parents and expanded jobs)."""
    return browser.find_elements("css selector", f"a[href*='/{kind}/']")


def wait_until(condition, timeout_s: float = 60) -> None:
    """Poll the single-page app, which loads its data after the page, until `condition` holds (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)


def screenshot(browser, url: str, out: Path, expand: str | None = None) -> None:
    browser.get(url)
    wait_until(lambda: links(browser, "runs") or links(browser, "models"))
    time.sleep(1)  # the rest of the table renders with its first rows
    click_all(browser, "button[aria-label='Close']")  # the assistant panel, when it opens by itself
    if expand:
        shown = len(links(browser, "runs"))
        wait_until(lambda: browser.find_elements("css selector", expand), 20)
        if click_all(browser, expand):
            wait_until(lambda: len(links(browser, "runs")) > shown, 30)
            time.sleep(1)
    browser.save_screenshot(str(out))
    print(f"{out}: {url} ({len(links(browser, 'runs'))} run links, {len(links(browser, 'models'))} model links)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the folder holding mlflow.db and mlartifacts/")
    parser.add_argument("dataset", help="the MLflow experiment (dataset.name)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--runs-png", default="mlflow-runs.png", help="the runs page's file name under --out")
    args = parser.parse_args()
    from mlflow import MlflowClient

    uri = f"sqlite:///{args.results.resolve() / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.dataset).experiment_id
    model = f"{args.dataset}-codebrain"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", uri, "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        args.out.mkdir(parents=True, exist_ok=True)
        browser = open_browser()
        try:
            screenshot(browser, f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning",
                       args.out / args.runs_png, expand="button[data-component-id*='runnamecellrenderer']")
            if client.search_registered_models(f"name = '{model}'"):  # a data-half-only store has none
                screenshot(browser, f"{base}/#/models/{model}", args.out / "mlflow-model.png")
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
