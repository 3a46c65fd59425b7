"""End to end through the real Airflow 3 UI, in a real headless Chromium, as a data engineer would use it.

Needs the running stack (``scripts/stack.sh up airflow``) and its env (``set -a; . .local/airflow.env; set +a``):
log in through the login form, open the DAG, press **Trigger** (setting ``rows`` to a small value when the DAG
has that param), wait until the new run is green in the grid, read the load task's result on its XCom tab, then
open the data-quality task's "Data quality report".

Environment: ``AIRFLOW_ETL_UI_URL`` (default http://127.0.0.1:8080), ``AIRFLOW_ETL_ADMIN_PASSWORD`` (required),
``ETL_E2E_DAG_ID`` / ``ETL_E2E_LOAD_TASK`` / ``ETL_E2E_DQ_TASK`` (default the pipeline DAG
``example_etl_pipeline`` with ``load_orders`` and ``check_orders``), ``ETL_E2E_ARTIFACTS`` (where the
screenshots ``grid.png``, ``xcom.png``, ``dq_report.png`` and a Playwright ``trace.zip`` go).

About the report link: the Airflow 3.3 UI renders an extra link only when its URL is same-origin or
``http:``/``https:``/``mailto:`` (a ``file://`` link gets no button, and Chromium would refuse it from an http
page anyway). The pipeline therefore writes its report to S3, and the link is a pre-signed http URL: the test
clicks the button the UI renders and checks the report that opens.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

pytestmark = [pytest.mark.e2e]

UI_URL = os.environ.get("AIRFLOW_ETL_UI_URL", "http://127.0.0.1:8080").rstrip("/")
ADMIN_USER = os.environ.get("AIRFLOW_ETL_ADMIN_USER", "admin")
DAG_ID = os.environ.get("ETL_E2E_DAG_ID", "example_etl_pipeline")
LOAD_TASK = os.environ.get("ETL_E2E_LOAD_TASK", "load_orders")
DQ_TASK = os.environ.get("ETL_E2E_DQ_TASK", "check_orders")
ARTIFACTS = Path(os.environ.get("ETL_E2E_ARTIFACTS", "/work/main/.local/e2e-artifacts"))
CHROMIUM = "/usr/bin/chromium"

REPORT_LINK_NAME = "Data quality report"
#: What the test types into the trigger form, for the params the DAG has (the others keep their defaults).
FORM_VALUES: dict[str, int] = {"rows": 2000}
RUN_TIMEOUT_S = 600  # a pipeline run takes 1-3 minutes on a 2-core machine
UI_TIMEOUT_MS = 30_000  # for any single UI element (the UI is slow while Spark runs)
TERMINAL_RUN_STATES = {"success", "failed"}
LOAD_RESULT_KEYS = {"records_read", "records_loaded", "records_dead_lettered"}


# ------------------------------------------------------------------------------------------- helpers


def _wait_for(condition: Callable[[], Any], *, timeout_s: float, interval_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def _rgb(locator: Locator) -> tuple[int, int, int]:
    """The rendered background colour of an element as sRGB (the UI's colours are oklch(...) values)."""
    r, g, b = locator.evaluate(
        """el => {
            const canvas = document.createElement('canvas');
            canvas.width = canvas.height = 1;
            const ctx = canvas.getContext('2d');
            ctx.fillStyle = getComputedStyle(el).backgroundColor;
            ctx.fillRect(0, 0, 1, 1);
            return Array.from(ctx.getImageData(0, 0, 1, 1).data).slice(0, 3);
        }"""
    )
    return r, g, b


def _is_green(rgb: tuple[int, int, int]) -> bool:
    r, g, b = rgb
    return g > 80 and g > 1.5 * r and g > 1.5 * b


class AirflowApi:
    """The REST API (/api/v2), only to learn when a run has finished and to cross-check what the UI shows."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base = base_url
        resp = requests.post(f"{base_url}/auth/token", json={"username": username, "password": password},
                             timeout=30)
        assert resp.status_code in (200, 201), f"POST /auth/token: {resp.status_code} {resp.text[:300]}"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        resp = self.session.get(f"{self.base}/api/v2{path}", params=params, timeout=30)
        assert resp.status_code == 200, f"GET /api/v2{path}: {resp.status_code} {resp.text[:500]}"
        return resp.json()

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self.get(f"{self.run_path(dag_id, run_id)}/taskInstances", limit=100)["task_instances"]
        return {ti["task_id"]: ti["state"] for ti in tis}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def admin_password() -> str:
    password = os.environ.get("AIRFLOW_ETL_ADMIN_PASSWORD")
    if not password:
        pytest.fail("AIRFLOW_ETL_ADMIN_PASSWORD is unset: `set -a; . .local/airflow.env; set +a` first")
    return password


@pytest.fixture(scope="module")
def api(admin_password: str) -> AirflowApi:
    try:
        requests.get(f"{UI_URL}/api/v2/version", timeout=10)
    except requests.ConnectionError as exc:
        pytest.fail(f"the Airflow UI at {UI_URL} does not answer ({exc}): `scripts/stack.sh up airflow`")
    return AirflowApi(UI_URL, ADMIN_USER, admin_password)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser, artifacts: Path) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport={"width": 1680, "height": 1000}, timezone_id="UTC")
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=UI_URL)  # the XCom "Copy" button
    context.tracing.start(snapshots=True, screenshots=False)
    yield context
    context.tracing.stop(path=str(artifacts / "trace.zip"))
    context.close()


@pytest.fixture
def page(context: BrowserContext, admin_password: str) -> Page:
    """A page logged in through the UI's login form."""
    page = context.new_page()
    page.goto(f"{UI_URL}/")
    expect(page).to_have_url(f"{UI_URL}/auth/login?next=%2F")
    page.get_by_label("Username").fill(ADMIN_USER)
    page.get_by_label("Password").fill(admin_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("nav-dags-link")).to_be_visible()
    expect(page).not_to_have_url(f"{UI_URL}/auth/login?next=%2F")
    return page


# ------------------------------------------------------------------------------------------- the test


def test_trigger_run_inspect_xcom_and_quality_report(page: Page, context: BrowserContext, api: AirflowApi,
                                                     artifacts: Path) -> None:
    expect.set_options(timeout=UI_TIMEOUT_MS)
    dag = api.get(f"/dags/{quote(DAG_ID, safe='')}/details")
    params: dict[str, Any] = dag.get("params") or {}
    to_fill = {name: value for name, value in FORM_VALUES.items() if name in params}

    # --- open the DAG and trigger it through the dialog -------------------------------------------------
    page.get_by_test_id("nav-dags-link").click()
    page.get_by_role("link", name=DAG_ID, exact=True).click()
    expect(page).to_have_url(f"{UI_URL}/dags/{DAG_ID}")
    for task_id in (DQ_TASK, LOAD_TASK):
        expect(page.get_by_test_id(f"task-{task_id}")).to_be_visible()

    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name=f"Trigger Dag - {DAG_ID}")).to_be_visible()
    # One input per param, named element_<param> (numbers are spinbuttons, booleans switches).
    for name in params:
        expect(dialog.locator(f'[name="element_{name}"]')).to_be_attached()
    for name, value in to_fill.items():
        field = dialog.locator(f'input[name="element_{name}"]')
        field.fill(str(value))
        field.press("Tab")
        expect(field).to_have_value(str(value))

    trigger = dialog.get_by_role("button", name="Trigger", exact=True)
    expect(trigger).to_be_enabled()
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(f"/api/v2/dags/{DAG_ID}/dagRuns")
    ) as posted:
        trigger.click()
    assert posted.value.status == 200, f"trigger failed: {posted.value.status} {posted.value.text()[:500]}"
    run_id: str = posted.value.json()["dag_run_id"]
    # .first: the UI mounts its toaster twice, so each toast is shown in two "Notifications" regions.
    expect(page.get_by_text("Dag Run Triggered").first).to_be_visible()
    expect(page).to_have_url(f"{UI_URL}/dags/{DAG_ID}/runs/{run_id}")  # the UI opens the new run
    print(f"\ntriggered {DAG_ID} run {run_id}")

    conf = api.get(api.run_path(DAG_ID, run_id))["conf"]
    assert {name: conf.get(name) for name in to_fill} == to_fill, f"the run's conf: {conf}"
    assert set(conf) == set(params), f"the run's conf {conf} does not match the DAG's params {sorted(params)}"

    # --- wait for the run to finish, then for the grid to show it green ---------------------------------
    def finished_state() -> str | None:
        state = api.get(api.run_path(DAG_ID, run_id))["state"]
        return state if state in TERMINAL_RUN_STATES else None

    started = time.monotonic()
    final = _wait_for(finished_state, timeout_s=RUN_TIMEOUT_S, interval_s=5, what=f"run {run_id} to finish")
    print(f"run finished as {final} after {time.monotonic() - started:.0f}s")
    assert final == "success", f"run {run_id} {final}; task states: {api.task_states(DAG_ID, run_id)}"

    # Still the run's page opened by the trigger: its grid refreshes itself (no reload).
    separator = page.get_by_role("separator")  # widen the grid panel (20% by default) for the screenshot
    box = separator.bounding_box()
    assert box is not None
    grab_y = box["y"] + box["height"] * 0.8  # not its middle: the "Collapse Details Panel" button is there
    page.mouse.move(box["x"] + box["width"] / 2, grab_y)
    page.mouse.down()
    page.mouse.move(box["x"] + 240, grab_y, steps=10)
    page.mouse.up()
    expect(page.get_by_role("button", name="Collapse Details Panel")).to_be_visible()

    run_bar = page.locator(f'a[href="/dags/{DAG_ID}/runs/{run_id}/"]')
    expect(run_bar).to_be_visible()
    bar_body = run_bar.locator("div").first
    _wait_for(lambda: _is_green(_rgb(bar_body)), timeout_s=60, interval_s=1,
              what=f"the grid's bar of run {run_id} to turn green")
    for task_id in (DQ_TASK, LOAD_TASK):
        badge = page.get_by_test_id(f"grid-{run_id}-{task_id}").get_by_test_id("task-state-badge")
        assert _is_green(_rgb(badge)), f"{task_id}'s cell in the grid is {_rgb(badge)}, not green"
    run_bar.hover()
    tooltip = page.get_by_test_id("basic-tooltip").filter(has_text=f"Run ID: {run_id}")
    expect(tooltip).to_contain_text("State: Success")
    run_bar.click()  # (re)opens the run's page, next to the grid
    expect(page).to_have_url(re.compile(re.escape(f"{UI_URL}/dags/{DAG_ID}/runs/{run_id}") + "/?$"))
    header = page.get_by_test_id("header-card")
    expect(header).to_contain_text(run_id)
    expect(header.get_by_test_id("state-badge")).to_have_text("Success")
    page.mouse.move(10, 990)  # no tooltip over the grid
    expect(tooltip).to_have_count(0)
    page.screenshot(path=str(artifacts / "grid.png"))

    # --- the load task's XCom: the load result ----------------------------------------------------------
    page.get_by_test_id(f"grid-{run_id}-{LOAD_TASK}").click()
    expect(page).to_have_url(f"{UI_URL}/dags/{DAG_ID}/runs/{run_id}/tasks/{LOAD_TASK}")
    page.get_by_role("link", name="Storage", exact=True).click()
    page.get_by_role("link", name="XCom", exact=True).click()
    expect(page).to_have_url(f"{UI_URL}/dags/{DAG_ID}/runs/{run_id}/tasks/{LOAD_TASK}/xcom")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name="return_value", exact=True))
    expect(row).to_have_count(1)
    page.get_by_test_id("expand-all-button").click()
    shown = row.get_by_test_id("xcom-value").get_by_role("code")  # a read-only Monaco editor
    expect(shown).to_contain_text('"records_read"')
    # The editor is at most 300 px high and renders only the lines in view; the load counters are the
    # last keys of the result: go to its end.
    shown.click()
    page.keyboard.press("Control+End")
    for key in sorted(LOAD_RESULT_KEYS):
        expect(shown).to_contain_text(f'"{key}"')
    # The whole value, as the UI has it: its "Copy to clipboard" button.
    row.get_by_role("button", name="Copy to clipboard").click()
    copied = json.loads(page.evaluate("() => navigator.clipboard.readText()"))
    stored = api.get(f"{api.run_path(DAG_ID, run_id)}/taskInstances/{LOAD_TASK}/xcomEntries/return_value",
                     stringify="false")["value"]
    assert copied == stored, f"the XCom tab has {copied}, the API {stored}"
    assert LOAD_RESULT_KEYS <= set(copied), copied
    assert copied["records_loaded"] > 0, copied
    assert copied["records_read"] >= copied["records_loaded"], copied
    page.screenshot(path=str(artifacts / "xcom.png"))

    # --- the data-quality task's report -----------------------------------------------------------------
    page.get_by_test_id(f"grid-{run_id}-{DQ_TASK}").click()  # keeps the current tab: .../{DQ_TASK}/xcom
    ti_url = f"{UI_URL}/dags/{DAG_ID}/runs/{run_id}/tasks/{DQ_TASK}"
    expect(page).to_have_url(re.compile(re.escape(ti_url) + "(/.*)?$"))
    # The Details tab fetches the task's extra links (GET .../taskInstances/<task>/links) for its
    # "Extra Links" section; keep what the UI received, it renders only some of them (see the docstring).
    with page.expect_response(
        lambda r: r.request.method == "GET" and f"/taskInstances/{DQ_TASK}/links" in r.url
    ) as links_response:
        page.get_by_role("link", name="Details", exact=True).click()
    expect(page).to_have_url(f"{ti_url}/details")
    assert links_response.value.status == 200, links_response.value.text()[:500]
    extra_links: dict[str, str | None] = links_response.value.json()["extra_links"]
    expect(page.get_by_role("heading", name="Extra Links")).to_be_visible()
    report_url = extra_links.get(REPORT_LINK_NAME)
    assert report_url, f"no {REPORT_LINK_NAME!r} among {DQ_TASK}'s extra links: {extra_links}"
    # Airflow 3.3's UI shows only http(s)/mailto/same-origin extra links: the S3 report's pre-signed URL.
    assert report_url.startswith(("http://", "https://")), report_url
    button = page.get_by_role("link", name=REPORT_LINK_NAME)
    expect(button).to_have_attribute("href", report_url)
    with context.expect_page() as opened:
        button.click()
    report = opened.value
    expect(report.get_by_role("heading", name="Summary", exact=True)).to_be_visible()
    expect(report.locator("body")).to_contain_text(run_id)
    expect(report.locator("body")).to_contain_text(f"{DAG_ID}.{DQ_TASK}")
    report.screenshot(path=str(artifacts / "dq_report.png"), full_page=True)
