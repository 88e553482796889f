"""The dashboard in a real headless Chromium: log in, trace, switch language, units, export.

A real uvicorn serves `create_app` on a real store of each backend (filled through the real
ingest, `tests.test_pages.fill_store`) on a free loopback port, in a thread; Playwright
drives Debian's Chromium (``/usr/bin/chromium``; no browser is ever downloaded). The
screenshots under ``docs/screenshots/`` are written by this test, with stable names,
so the README always shows the pages as they are.

The ID field is filled the way a USB scanner does it: the whole CCCD text typed as
keystrokes, then Enter.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
import uvicorn
from playwright.sync_api import Dialog, Page, Route, sync_playwright

from doorscan.synthetic import cccd_text
from tests.hubstore import open_store
from tests.test_pages import DAY, F1, F2, INDEX, NOW, PASSWORD, XSS, fill_store
from tests.waiting import wait_for

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def base_url(hub_db: str) -> Iterator[str]:
    """The dashboard served by a real uvicorn in a thread; stopped and joined after."""
    from hub.web.app import create_app

    with open_store(hub_db) as store:
        fill_store(store)
        port = _free_port()
        config = uvicorn.Config(
            create_app(store, now=lambda: NOW), host="127.0.0.1", port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        try:
            assert wait_for(lambda: server.started, timeout_s=30), "uvicorn did not start"
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            assert not thread.is_alive(), "uvicorn did not stop"


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _log_in(page: Page, base_url: str, user_id: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("#user_id", user_id)
    page.fill("#password", PASSWORD)
    page.click("#login-button")


def _scan_card_and_trace(page: Page, reason: str) -> None:
    page.fill("#reason", reason)
    page.click("#subject")
    page.keyboard.type(cccd_text(INDEX))  # what a keyboard-wedge scanner does
    page.keyboard.press("Enter")
    page.wait_for_selector("#trace-result")


def test_dashboard_in_chromium(base_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(
                viewport={"width": 1200, "height": 800}, accept_downloads=True, locale="vi-VN"
            )
            page = context.new_page()

            # A venue is named <script>alert(1)</script>: if it ever ran, a dialog would open.
            def on_dialog(dialog: Dialog) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)

            page.goto(f"{base_url}/login?lang=en")
            assert page.inner_text("h1") == "Log in"
            _shot(page, "login-en")
            page.goto(f"{base_url}/login?lang=vi")
            assert page.inner_text("h1") == "Đăng nhập"
            _shot(page, "login-vi")

            # A wrong password shows the form again with the error.
            page.fill("#user_id", "tracer")
            page.fill("#password", "không phải mật khẩu")
            page.click("#login-button")
            assert "không đúng" in page.inner_text(".error")

            _log_in(page, base_url, "tracer")
            assert page.url.endswith("/trace")
            _scan_card_and_trace(page, "ca bệnh số 12")
            result = page.inner_text("#trace-result")
            assert F1.name in result and F2.name in result and "F2" in result
            assert page.input_value("#subject") == INDEX.id_number
            assert page.locator("figure.timeline svg circle").count() >= 1
            _shot(page, "trace-vi")

            with page.expect_download() as info:
                page.click("#export-xlsx")
            download = info.value
            saved = tmp_path / "trace.xlsx"
            download.save_as(saved)
            sheet = openpyxl.load_workbook(saved).active
            assert sheet is not None
            rows = [list(row) for row in sheet.iter_rows(values_only=True)]
            assert rows[0][:3] == ["degree", "id_number", "name"], rows[0]
            assert [1, F1.id_number, F1.name] in [row[:3] for row in rows], rows
            assert [2, F2.id_number, F2.name] in [row[:3] for row in rows], rows

            page.click("#lang-switch")
            assert page.inner_text("h1") == "Trace"
            assert page.inner_text("label[for=reason]") == "Reason"
            assert "Log out" in page.inner_text("header")
            _scan_card_and_trace(page, "case 12")
            assert "Index person (F0)" in page.inner_text("#trace-result")
            _shot(page, "trace-en")

            page.click("#logout")
            page.wait_for_url(f"{base_url}/login")
            page.goto(f"{base_url}/trace")
            assert page.url.startswith(f"{base_url}/login")  # the session is gone

            _log_in(page, base_url, "admin")
            assert page.url.endswith("/units")
            assert page.inner_text("h1") == "Units"  # the language cookie outlived the session
            silent = page.locator("tr.silent")
            assert silent.count() == 1 and "door-xss" in silent.inner_text()
            _shot(page, "units-en")
            page.goto(f"{base_url}/units?lang=vi")
            assert page.inner_text("h1") == "Thiết bị"
            assert XSS in page.inner_text("table.units")  # shown as text
            _shot(page, "units-vi")

            page.goto(f"{base_url}/reports?since=2022-01-01&until=2022-01-10&days=1")
            assert page.locator("figure.bars svg rect").count() == 10
            _shot(page, "reports-vi")
            page.goto(f"{base_url}/reports?since=2022-01-01&until=2022-01-10&days=1&lang=en")
            assert "Scans per day" in page.inner_text("main")
            _shot(page, "reports-en")

            page.goto(f"{base_url}/trace")
            assert page.inner_text("h1") == "Not allowed"
            assert "admin" in page.inner_text("#forbidden")
            _shot(page, "forbidden-en")

            page.click("#logout")
            page.wait_for_url(f"{base_url}/login")
        finally:
            browser.close()
    assert dialogs == []


def test_api_docs_render_with_no_network_and_break_no_csp_rule(base_url: str) -> None:
    """/docs and /redoc in Chromium with every request off the hub cut: they still render
    (their files are the hub's own), under a CSP that lets no other script run."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page()

            def cut_off(route: Route) -> None:
                if route.request.url.startswith(base_url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", cut_off)
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{base_url}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "doorscan hub" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector('[data-path="/api/v1/trace"]', timeout=30_000)
            page.goto(f"{base_url}/redoc")
            page.wait_for_selector("h1", timeout=30_000)
            assert "doorscan hub" in page.inner_text("h1")
        finally:
            browser.close()
    assert outside == []
    # ReDoc's own footer links a logo on its CDN: the CSP blocks it, which is its job. No
    # script, style or connection of the pages is blocked (they would then be broken).
    blocked = [m for m in console if "Content Security Policy" in m]
    assert all("Loading the image 'https://cdn.redoc.ly/" in m for m in blocked), blocked


def test_operator_pages_in_chromium(base_url: str) -> None:
    """The admin adds a user and finds the change in the audit log; a venue owner lists its
    visitors, masked; both languages, every page without a script (the CSP forbids them)."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 800}, locale="vi-VN")
            page = context.new_page()
            _log_in(page, base_url, "admin")
            page.goto(f"{base_url}/users?lang=vi")
            assert page.inner_text("h1") == "Người dùng"
            page.fill("#new_user_id", "ytepleiku2")
            page.fill("#new_name", "Y tế Pleiku 2")
            page.select_option("#new_role", "tracer")
            page.fill("#new_password", PASSWORD)
            page.click("#add-user")
            page.wait_for_selector("#user-ytepleiku2")
            assert "Đã thêm người dùng ytepleiku2." in page.inner_text("main")
            _shot(page, "users-vi")
            page.click("#toggle-ytepleiku2")
            page.wait_for_selector("#user-ytepleiku2.silent")
            page.goto(f"{base_url}/audit?lang=en&account=admin")
            assert page.inner_text("h1") == "Audit log"
            assert "The log is intact" in page.inner_text("#chain-check")
            cells = page.inner_text("table.audit")
            assert "user_add" in cells and "user_change" in cells and "web" in cells
            _shot(page, "audit-en")
            page.click("#logout")
            _log_in(page, base_url, "venue")
            page.goto(f"{base_url}/visitors?lang=vi")
            page.fill("#reason", "kiểm tra khách")
            page.fill("#since", DAY.strftime("%d/%m/%Y"))
            page.fill("#until", DAY.strftime("%d/%m/%Y"))
            page.click("#show-visitors")
            page.wait_for_selector("#visitors-result")
            text = page.inner_text("#visitors-result")
            assert "Quyết định 2666/QĐ-BYT" in text
            assert INDEX.id_number not in text and INDEX.id_number[:7] in text
            _shot(page, "visitors-vi")
            assert page.evaluate("document.scripts.length") == 0
        finally:
            browser.close()
