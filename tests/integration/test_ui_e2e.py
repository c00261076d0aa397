"""The Dagster UI end to end: `lmpipe ui --config` on a small books profile, headless Chromium.

Materialize all on the data group (a backfill of every partition) and Materialize on pretrained_model run the
profile's config, as the code location's defaults: the raw corpus and token shards equal those of `lmpipe run`
with the same profile in another home, and the model trains for the profile's max_steps. Then the metadata.

Needs Debian's chromium at /usr/bin/chromium (CI installs it; skipped otherwise). Screenshots are written
under the test's tmp_path and their paths printed (see them with ``pytest -rA -s``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import dagster as dg
import pytest
import yaml

from lmcore.data.partitions import PARTITIONS
from tests.integration.ui_helpers import CHROMIUM, CHROMIUM_ARGS, PROJECT_ROOT, UiServer, lmpipe_ui

pytestmark = pytest.mark.e2e

DATA_ASSETS = ["base_model", "raw_corpus", "clean_corpus", "splits", "tokenizer", "tokenized", "token_shards"]
PARTITIONED = {"raw_corpus", "clean_corpus", "tokenized"}
BACKFILL_RUNS = [{"raw_corpus", "clean_corpus"}, {"splits", "tokenizer"}, {"tokenized"}, {"token_shards"}]
"""The backfill's runs in order. The daemon launches assets once their parents are done: the partitioned stages
(single-run backfill policy) take all partitions in one run, the unpartitioned ones run after them."""
RANGE = {"dagster/asset_partition_range_start": PARTITIONS[0], "dagster/asset_partition_range_end": PARTITIONS[-1]}
BACKFILL_TIMEOUT_S = 600  # ~4.5-5.5 min on 2 busy cores: 4 runs of subprocess steps, the daemon ticks every 30 s
UI_TIMEOUT_MS = 60_000  # the React app on a loaded machine; each wait is bounded

_GROUP = """{ assetNodes { assetKey { path } groupName repository { name location { name } } } }"""
_BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on PartitionBackfill { status runs(limit: 20) { id status startTime assetSelection { path } tags { key value } } }
  ... on PythonError { message } } }"""
_RAW_DOCUMENTS = """{ assetOrError(assetKey: {path: ["raw_corpus"]}) { ... on Asset { assetMaterializations(limit: 100)
  { partition metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""
_VERSIONS = """query($name: String!) { assetOrError(assetKey: {path: [$name]}) { ... on Asset {
  assetMaterializations(limit: 100) { partition metadataEntries { label ... on TextMetadataEntry { text } } } } } }"""
BOOKS = PROJECT_ROOT.parent / "shared" / "data" / "corpus" / "gutenberg"
MAX_STEPS = 7
"""pretrained_model's max_steps in the test profile (TrainConfig's default is another number)."""


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
    """The row of a metadata table (asset page or partition page) whose key cell is exactly ``key``."""
    return page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first


def _metadata_int(page, key: str) -> int:
    from playwright.sync_api import expect

    row = _metadata_row(page, key)
    expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    # The asset page's rows are key, timestamp, value; a partition's are key, value and an empty cell.
    value = [t.strip() for t in row.locator("td").all_inner_texts() if t.strip()][-1]
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


def _launch_backfill(page, tmp_path: Path, shots: list[Path]) -> str:
    """Materialize all → the partitions dialog: select All partitions, launch the backfill; returns its id."""
    from playwright.sync_api import expect

    page.get_by_role("button", name=re.compile(r"Materialize all")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text(f"Launch runs to materialize {len(DATA_ASSETS)} assets")
    dialog.get_by_role("button", name="All", exact=True).click()
    expect(dialog.get_by_text(f"{len(PARTITIONS)} partitions selected", exact=True)).to_be_visible()
    _shot(page, tmp_path / "2-backfill-dialog.png", shots)
    dialog.get_by_role("button", name="Launch backfill").click()
    created = page.get_by_text(re.compile(r"^Created backfill\s*[a-z]{8}$")).first  # a toast, for a few seconds
    expect(created).to_be_visible()
    return re.search(r"[a-z]{8}$", created.inner_text().strip()).group(0)


def _wait_for_backfill(page, server: UiServer, backfill_id: str) -> None:
    """Watch the backfill page until its Status says Succeeded (it live-updates; reloaded every 30 s anyway)."""
    status = page.get_by_text("Status", exact=True).first.locator("xpath=..")
    deadline = time.monotonic() + BACKFILL_TIMEOUT_S
    reload_at = time.monotonic() + 30
    while not (status.is_visible() and "Succeeded" in status.inner_text()):
        if status.is_visible() and re.search(r"Fail|Cancel", status.inner_text()):
            pytest.fail(f"backfill {backfill_id}: the UI shows {status.inner_text()!r}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"backfill {backfill_id} not successful after {BACKFILL_TIMEOUT_S}s:\n{server.log_tail()}")
        if time.monotonic() > reload_at:
            page.reload(wait_until="domcontentloaded")
            reload_at = time.monotonic() + 30
        page.wait_for_timeout(2000)


def _check_backfill(page) -> None:
    """The backfill page's table: every data asset 100% completed, all partitions of the partitioned ones."""
    from playwright.sync_api import expect

    n = len(PARTITIONS)
    for name in DATA_ASSETS:
        # A virtualized grid, not a <table>: a row reads name, progress, then targeted, in progress, succeeded, failed.
        counts = [n, 0, n, 0] if name in PARTITIONED else ["-", "-", "Succeeded", "-"]
        row = rf"^{name}\n(?:{name}\n)?100% completed\n" + r"\n".join(map(str, counts)) + "$"
        expect(page.locator("body")).to_contain_text(re.compile(row, re.MULTILINE), use_inner_text=True)


def _check_backfill_runs(server: UiServer, backfill_id: str) -> list[dict]:
    """What the instance says: the backfill succeeded with BACKFILL_RUNS, the partitioned ones over the whole range."""
    backfill = server.graphql(_BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    runs = sorted(backfill["runs"], key=lambda r: r["startTime"])
    selections = [{a["path"][0] for a in r["assetSelection"]} for r in runs]
    # base_model has no upstream: its run starts with the first ones, in either order
    assert [s for s in selections if s != {"base_model"}] == BACKFILL_RUNS, runs
    assert selections.count({"base_model"}) == 1, runs
    for run in runs:
        assert run["status"] == "SUCCESS", run
        tags = {t["key"]: t["value"] for t in run["tags"] if t["key"] in RANGE}
        partitioned = {a["path"][0] for a in run["assetSelection"]} <= PARTITIONED
        assert tags == (RANGE if partitioned else {}), (run["id"], tags)
    return runs


def _check_raw_corpus_partitions(page, server: UiServer, tmp_path: Path, shots: list[Path]) -> tuple[str, int]:
    """raw_corpus's Partitions tab: all 16 materialized; the fullest partition's page shows its own metadata."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/raw_corpus", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Partitions").click()
    n = len(PARTITIONS)
    expect(page.get_by_text(f"{n} Partitions Selected", exact=True)).to_be_visible()
    for counts in (f"Materialized ({n})", "Missing (0)", "Failed (0)", "Materializing (0)"):
        expect(page.get_by_text(counts, exact=True)).to_be_visible()
    for key in PARTITIONS:
        expect(page.get_by_text(key, exact=True).filter(visible=True).first).to_be_visible()

    latest = {}  # partition -> documents, from the instance (events come newest first)
    for event in server.graphql(_RAW_DOCUMENTS)["assetOrError"]["assetMaterializations"]:
        entries = {e["label"]: e.get("intValue") for e in event["metadataEntries"]}
        latest.setdefault(event["partition"], entries["documents"])
    assert sorted(latest) == list(PARTITIONS), latest
    key = max(latest, key=latest.get)
    assert latest[key] > 0, latest

    page.get_by_text(key, exact=True).filter(visible=True).first.click()
    page.wait_for_url(re.compile(rf"[?&]partition={key}\b"))
    assert _metadata_int(page, "documents") == latest[key]
    assert _metadata_int(page, "documents_in_run") == sum(latest.values())  # a figure of the whole run
    assert _metadata_int(page, "partitions_rebuilt") == n
    expect(_metadata_row(page, "rebuilt")).to_contain_text("true")
    units = _metadata_row(page, "units")
    expect(units.get_by_role("cell", name=re.compile(r"[0-9]+-0[.]txt$")).first).to_be_visible()  # a book
    units.scroll_into_view_if_needed()
    _shot(page, tmp_path / "5-raw-corpus-partitions.png", shots)
    return key, latest[key]


def _check_splits_tokenizer_shards(page, server: UiServer, tmp_path: Path, shots: list[Path]) -> None:
    """The unpartitioned assets' pages show their numbers and bar charts."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/splits", wait_until="domcontentloaded")
    docs = {s: _metadata_int(page, f"{s}_documents") for s in ("train", "val", "test")}
    assert docs["train"] > 0 and docs["val"] > 0 and docs["test"] > 0, docs
    assert _metadata_int(page, "partitions") == len(PARTITIONS)
    dialog = _open_plot(page, "documents_per_split", "Documents per split")
    _shot(page, tmp_path / "6-splits-metadata.png", shots)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    page.goto(f"{server.url}/assets/tokenizer", wait_until="domcontentloaded")
    assert _metadata_int(page, "vocab_size") > 256
    assert 0 < _metadata_int(page, "trained_on_documents") <= docs["train"]

    page.goto(f"{server.url}/assets/token_shards", wait_until="domcontentloaded")
    tokens = {s: _metadata_int(page, f"{s}_tokens") for s in ("train", "val", "test")}
    assert tokens["train"] > 0 and tokens["val"] > 0 and tokens["test"] > 0, tokens
    expect(_metadata_row(page, "dtype")).to_contain_text(re.compile(r"uint(16|32)"))
    _metadata_row(page, "train_tokens").scroll_into_view_if_needed()
    _shot(page, tmp_path / "7-token-shards-metadata.png", shots)
    _open_plot(page, "tokens_per_split", "Tokens per split")
    _shot(page, tmp_path / "8-token-shards-plot.png", shots)
    print(f"documents per split {docs}, tokens per split {tokens}")


def _books_profile(tmp_path: Path) -> Path:
    """Six short books (1.2 MB), a small vocabulary and a tiny model: the data group in about a minute, training in
    seconds. A book is one document, so a quarter of them each for validation and test keeps those splits filled."""
    books = [str(BOOKS / f"{n}-0.txt") for n in (43, 11, 215, 55, 219, 64317)]
    assets = {
        "raw_corpus": {"sources": books},
        "clean_corpus": {"max_doc_chars": 20000, "min_doc_chars": 200},
        "splits": {"val_fraction": 0.25, "test_fraction": 0.25},
        "tokenizer": {"vocab_size": 512},
        "pretrained_model": {"preset": "tiny", "train": {"max_steps": MAX_STEPS, "batch_size": 4, "eval_every": 0}},
    }
    path = tmp_path / "books.yaml"
    path.write_text(yaml.safe_dump({"description": "two books, a tiny model", "assets": assets}))
    return path


def _cli_versions(profile: Path, home: Path) -> dict[str, dict[str, str]]:
    """``lmpipe run --config PROFILE --select group:data`` in ``home``: the latest data version of each partition of
    raw_corpus and of token_shards, read from that home's instance."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "LMPIPE_PROFILE")}
    env |= {"LMPIPE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pipelines.cli", "run", "--config", str(profile), "--select", "group:data"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        versions = {}
        for name in ("raw_corpus", "token_shards"):
            records = instance.fetch_materializations(dg.AssetKey(name), limit=100).records  # newest first
            events = [(r.partition_key, r.asset_materialization.metadata["data_version"].value) for r in records]
            versions[name] = _latest(events)
    return versions


def _latest(events: list[tuple[str | None, str]]) -> dict[str, str]:
    """Partition ("None" when unpartitioned) -> the artifact digest (metadata ``data_version``) of its newest
    materialization (events newest first)."""
    latest: dict[str, str] = {}
    for partition, version in events:
        latest.setdefault(str(partition), version)
    return latest


def _ui_versions(server: UiServer, name: str) -> dict[str, str]:
    """The latest data version of each partition of ``name`` ("None" for an unpartitioned asset), as the UI has it."""
    events = server.graphql(_VERSIONS, {"name": name})["assetOrError"]["assetMaterializations"]  # newest first
    versions = [{m["label"]: m.get("text") for m in e["metadataEntries"]}["data_version"] for e in events]
    return _latest([(e["partition"], v) for e, v in zip(events, versions, strict=True)])


def _materialize_pretrained_model(page, server: UiServer, tmp_path: Path, shots: list[Path]) -> None:
    """The asset page's Materialize button: a run with the code location's config, the profile's max_steps."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/assets/pretrained_model", wait_until="domcontentloaded")
    page.get_by_role("button", name=re.compile(r"Materialize$")).first.click()  # its name starts with an icon
    deadline = time.monotonic() + 300
    while True:
        runs = [
            r
            for r in server.graphql(_RUNS)["runsOrError"]["results"]
            if [a["path"] for a in r["assetSelection"] or []] == [["pretrained_model"]]
        ]
        if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"pretrained_model run not finished after 300 s: {runs}\n{server.log_tail()}")
        time.sleep(2)
    assert runs[0]["status"] == "SUCCESS", f"{runs[0]}\n{server.log_tail()}"
    assert not (yaml.safe_load(runs[0]["runConfigYaml"]) or {}).get("ops")  # launched without run config
    page.reload(wait_until="domcontentloaded")
    assert _metadata_int(page, "steps") == MAX_STEPS
    expect(_metadata_row(page, "steps")).to_be_visible()
    _shot(page, tmp_path / "9-pretrained-model.png", shots)


_RUNS = """{ runsOrError(limit: 10) { ... on Runs { results {
  runId status runConfigYaml assetSelection { path } } } } }"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found (Debian: apt-get install chromium)")
@pytest.mark.skipif(not BOOKS.is_dir(), reason=f"{BOOKS} not found (../shared beside the checkout)")
def test_the_ui_runs_the_profile_like_the_cli(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    expect = sync_api.expect
    started = time.monotonic()
    shots: list[Path] = []
    profile = _books_profile(tmp_path)
    cli = _cli_versions(profile, tmp_path / "cli-home")  # the reference, in another home
    home, log = tmp_path / "home", tmp_path / "lmpipe-ui.log"
    print(f"LMPIPE_HOME={home}, UI log {log}; lmpipe run in another home took {time.monotonic() - started:.0f}s")

    with lmpipe_ui(home, log, config=profile) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)

            # 1. The data group's asset graph shows the data assets.
            page.goto(_group_url(server, "data"), wait_until="domcontentloaded")
            for name in DATA_ASSETS:
                expect(page.get_by_text(name, exact=True).filter(visible=True).first).to_be_visible()
            expect(page.get_by_role("button", name=re.compile(r"Materialize all"))).to_be_enabled()
            _shot(page, tmp_path / "1-asset-graph.png", shots)

            # 2. Materialize all: a backfill of every partition, no run config: the code location's, the profile's.
            backfill_id = _launch_backfill(page, tmp_path, shots)
            print(f"launched backfill {backfill_id}")

            # 3. The backfill's page: wait for Succeeded; its runs are those of BACKFILL_RUNS.
            page.goto(f"{server.url}/runs/b/{backfill_id}", wait_until="domcontentloaded")
            _wait_for_backfill(page, server, backfill_id)
            _check_backfill(page)
            _shot(page, tmp_path / "3-backfill-succeeded.png", shots)
            runs = _check_backfill_runs(server, backfill_id)
            page.get_by_role("tab", name="Runs").click()
            for run in runs:
                expect(page.get_by_text(run["id"][:8], exact=True)).to_be_visible()
            expect(page.get_by_text("Success", exact=True)).to_have_count(len(runs))
            _shot(page, tmp_path / "4-backfill-runs.png", shots)

            # 4. The same data as lmpipe run with the profile in another home: raw corpus and token shards.
            assert _ui_versions(server, "raw_corpus") == cli["raw_corpus"]
            assert _ui_versions(server, "token_shards") == cli["token_shards"]

            # 5. raw_corpus's partitions, then the unpartitioned assets' metadata.
            key, documents = _check_raw_corpus_partitions(page, server, tmp_path, shots)
            print(f"backfill runs {[r['id'][:8] for r in runs]}; raw_corpus partition {key}: {documents} documents")
            _check_splits_tokenizer_shards(page, server, tmp_path, shots)

            # 6. Materialize on pretrained_model trains with the profile's max_steps.
            _materialize_pretrained_model(page, server, tmp_path, shots)
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
