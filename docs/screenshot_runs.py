"""Screenshot of the MLflow runs page of one experiment with its newest invocation unfolded: every
stage's run under the parent, with a metric and some parameters as columns.

    python docs/screenshot_runs.py [URL] [EXPERIMENT] [OUT.png] [COLUMN ...]

URL: a tracking server (`lcsc mlflow-server`), default http://127.0.0.1:5000; EXPERIMENT default
digits-default; OUT default docs/mlflow_runs.png; COLUMNS default fid, train.iterations,
search.budget, evaluate.samples. The page needs clicks (unfold the parent, pick columns), so this
drives Debian's chromium (apt-get install -y --no-install-recommends chromium) through Playwright
(pip install playwright, in any environment; it uses that chromium and downloads no browser).
Written against the MLflow 3.17 UI: its class names and layout may change between releases.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
import urllib.request

COLUMNS = ["fid", "train.iterations", "search.budget", "evaluate.samples"]
HIDDEN = ["Dataset", "Source", "Models"]  # attribute columns that stay empty for lcsc's runs
SIZE = {"width": 1900, "height": 1000}


def experiment_id(url: str, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as r:
        return json.loads(r.read())["experiment"]["experiment_id"]


def toggle_column(page, name: str) -> None:
    """Tick (or untick) the column `name` in the runs table's column chooser."""
    page.get_by_text("Columns", exact=True).first.click(timeout=10000)
    page.wait_for_timeout(800)
    page.keyboard.type(name)
    page.wait_for_timeout(1200)
    title = page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{re.escape(name)}$"))
    node = page.locator(".du-bois-light-tree-treenode").filter(has=title)
    node.first.locator(".du-bois-light-tree-checkbox").click(timeout=5000)
    page.keyboard.press("Escape")
    page.wait_for_timeout(800)


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    url = argv[0] if argv else "http://127.0.0.1:5000"
    experiment = argv[1] if len(argv) > 1 else "digits-default"
    out = argv[2] if len(argv) > 2 else "docs/mlflow_runs.png"
    columns = argv[3:] or COLUMNS
    page_url = f"{url}/#/experiments/{experiment_id(url, experiment)}/runs"
    print(f"screenshot of {page_url}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport=SIZE)
        page.goto(page_url)
        page.wait_for_timeout(6000)
        close = page.locator('[aria-label="Close"]')  # the assistant's side panel, where the UI opens it
        if close.count():
            close.first.click()
        header = page.get_by_text("Run Name", exact=True).first.bounding_box()
        y = header["y"] + header["height"] / 2
        page.mouse.click(header["x"] + 12, y + 31)  # the newest parent run's unfold button, first row
        page.wait_for_timeout(2500)
        for name in [*columns, *HIDDEN]:
            toggle_column(page, name)
        # widen the run name column so each stage's name and wildcards show
        edge = page.get_by_text("Created", exact=True).first.bounding_box()["x"] - 14
        page.mouse.move(edge - 20, y)
        page.mouse.move(edge, y, steps=3)
        page.mouse.down()
        page.mouse.move(edge + 200, y, steps=12)
        page.mouse.up()
        page.mouse.move(SIZE["width"] - 5, SIZE["height"] - 5)
        page.wait_for_timeout(1500)
        page.screenshot(path=out)
        browser.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
