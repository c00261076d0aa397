"""The Dagster UI end to end: `lmpipe ui`, headless Chromium, materialize the data group, read its metadata.

Needs Debian's chromium at /usr/bin/chromium (CI installs it; skipped otherwise). Screenshots are written
under the test's tmp_path and their paths printed (see them with ``pytest -rA -s``).
"""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.integration.ui_helpers import CHROMIUM, CHROMIUM_ARGS, UiServer, lmpipe_ui

pytestmark = pytest.mark.e2e

DATA_ASSETS = ["raw_corpus", "clean_corpus", "splits", "tokenizer", "token_shards"]
RUN_TIMEOUT_S = 480  # the data group takes ~1.5 min on 2 busy cores (one subprocess per step)
UI_TIMEOUT_MS = 60_000  # the React app on a loaded machine; each wait is bounded

_GROUP = """{ assetNodes { assetKey { path } groupName repository { name location { name } } } }"""
_RUN = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"""


def _group_url(server: UiServer, group: str) -> str:
    """/locations/<repo>@<location>/asset-groups/<group>: the group's lineage page with its Materialize button."""
    nodes = [n for n in server.graphql(_GROUP)["assetNodes"] if n["groupName"] == group]
    assert nodes, f"no asset in group {group!r}"
    repo = nodes[0]["repository"]
    address = urllib.parse.quote(f"{repo['name']}@{repo['location']['name']}", safe="@")
    return f"{server.url}/locations/{address}/asset-groups/{group}"


def _shot(page, path: Path, shots: list[Path]) -> None:
    page.screenshot(path=str(path))
    shots.append(path)
    print(f"screenshot: {path}")


def _metadata_row(page, key: str):
    """The row of the asset page's metadata table whose key cell is exactly ``key``."""
    return page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first


def _metadata_int(page, key: str) -> int:
    from playwright.sync_api import expect

    row = _metadata_row(page, key)
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    value = row.locator("td").last.inner_text().strip()
    assert re.fullmatch(r"[\d,]+", value), f"{key}: expected an integer in the UI, got {value!r}"
    return int(value.replace(",", ""))


def _open_plot(page, key: str, title: str):
    """Click a Markdown metadata entry's [Show Markdown] and return its dialog, checking the PNG is rendered."""
    from playwright.sync_api import expect

    row = _metadata_row(page, key)
    row.get_by_text("Show Markdown").click()
    dialog = page.get_by_role("dialog").filter(has_text=key)
    expect(dialog).to_be_visible(timeout=UI_TIMEOUT_MS)
    img = dialog.locator('img[src^="data:image/png;base64,"]')
    expect(img).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(img).to_have_attribute("alt", title)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
    size = img.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size[0] >= 100 and size[1] >= 100, f"{key}: plot image is {size}"
    return dialog


def _wait_for_success(page, server: UiServer, run_id: str) -> None:
    """Watch the run page until its status tag says Success (it live-updates; reloaded every 30 s anyway)."""
    success = page.get_by_text("Success", exact=True)
    ended = page.get_by_text(re.compile(r"^(Failure|Canceled)$"))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    reload_at = time.monotonic() + 30
    while not success.first.is_visible():
        if ended.first.is_visible():
            pytest.fail(f"run {run_id}: the UI shows {ended.first.inner_text()!r}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} not successful after {RUN_TIMEOUT_S}s:\n{server.log_tail()}")
        if time.monotonic() > reload_at:
            page.reload(wait_until="domcontentloaded")
            reload_at = time.monotonic() + 30
        page.wait_for_timeout(2000)
    # What the UI shows agrees with the instance.
    assert server.graphql(_RUN, {"id": run_id})["runOrError"]["status"] == "SUCCESS"


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (Debian: apt-get install chromium)")
def test_materialize_data_group_from_the_ui_and_see_its_metadata(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    expect = sync_api.expect
    started = time.monotonic()
    shots: list[Path] = []
    home, log = tmp_path / "home", tmp_path / "lmpipe-ui.log"
    print(f"LMPIPE_HOME={home}, UI log {log}")

    with lmpipe_ui(home, log) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)

            # 1. The data group's asset graph shows the five data assets.
            page.goto(_group_url(server, "data"), wait_until="domcontentloaded")
            for name in DATA_ASSETS:
                expect(page.get_by_text(name, exact=True).filter(visible=True).first).to_be_visible()
            materialize = page.get_by_role("button", name=re.compile(r"Materialize all"))
            expect(materialize).to_be_enabled()
            _shot(page, tmp_path / "1-asset-graph.png", shots)

            # 2. Materialize all, with the assets' default config (builtin:python-docs corpus).
            materialize.click()
            launched = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
            launchpad = page.get_by_role("dialog")
            expect(launched.or_(launchpad).first).to_be_visible()
            if not launched.is_visible():  # a launchpad/config dialog: launch it as it is
                launchpad.get_by_role("button", name=re.compile(r"(Materialize|Launch run)")).last.click()
                expect(launched).to_be_visible()
            prefix = re.search(r"[0-9a-f]{8}", launched.inner_text()).group(0)
            print(f"launched run {prefix}")

            # 3. Open the run from the runs list and wait for the UI to show Success.
            page.goto(f"{server.url}/runs", wait_until="domcontentloaded")
            page.get_by_role("link", name=re.compile(prefix)).first.click()
            page.wait_for_url(re.compile(rf"/runs/{prefix}[0-9a-f-]+"))
            run_id = re.search(rf"/runs/({prefix}[0-9a-f-]+)", page.url).group(1)
            _wait_for_success(page, server, run_id)
            _shot(page, tmp_path / "2-run-succeeded.png", shots)

            # 4. The splits and token_shards pages show their numbers and bar charts.
            page.goto(f"{server.url}/assets/splits", wait_until="domcontentloaded")
            docs = {s: _metadata_int(page, f"{s}_documents") for s in ("train", "val", "test")}
            assert docs["train"] > 0 and docs["train"] >= docs["val"] + docs["test"] > 0, docs
            dialog = _open_plot(page, "documents_per_split", "Documents per split")
            _shot(page, tmp_path / "3-splits-metadata.png", shots)
            dialog.get_by_role("button", name="Close").click()
            expect(dialog).to_be_hidden()

            page.goto(f"{server.url}/assets/token_shards", wait_until="domcontentloaded")
            tokens = {s: _metadata_int(page, f"{s}_tokens") for s in ("train", "val", "test")}
            assert tokens["train"] > 0 and tokens["val"] > 0 and tokens["test"] > 0, tokens
            expect(_metadata_row(page, "dtype")).to_contain_text(re.compile(r"uint(16|32)"))
            _metadata_row(page, "train_tokens").scroll_into_view_if_needed()
            _shot(page, tmp_path / "4-token-shards-metadata.png", shots)
            _open_plot(page, "tokens_per_split", "Tokens per split")
            _shot(page, tmp_path / "5-token-shards-plot.png", shots)
            print(f"documents per split {docs}, tokens per split {tokens}")
        except BaseException:  # pytest.fail and pytest-timeout raise BaseExceptions: still take the screenshot
            with_failure = tmp_path / "failure.png"
            try:
                if page is not None:
                    _shot(page, with_failure, shots)
            except Exception as exc:  # the original error matters more
                print(f"no failure screenshot: {exc}")
            print(f"UI log tail:\n{server.log_tail()}")
            raise
        finally:
            browser.close()

    print(f"e2e wall time {time.monotonic() - started:.1f}s; final screenshot: {shots[-1]}")
