"""The agentless pages in a real browser: a discovery run followed live (htmx asks for
its progress every second, without reloading the page), then a monitor made from the
device it found and polled. The Windows host is a WS-Management test server on a
loopback address; the real wmi plugin finds and polls it.

Skipped without Playwright and Chromium, as ``test_dashboard_browser`` (whose
fixtures this module uses).
"""

from __future__ import annotations

import pytest

from lunasentri_core.testing import WsmanServer
from lunasentri_core.testing.wsman_data import HOST

from .test_dashboard_browser import PHONE, Watched, chromium, log_in, shared, watched
from .test_ingest import Shared

__all__ = ["chromium", "shared", "watched"]  # the fixtures this module uses

WINDOWS = "127.74.16.3"
USER, PASSWORD = "monitor", "a windows password"


def test_a_discovery_run_is_followed_live_and_its_device_monitored(
    shared: Shared, watched: Watched
) -> None:
    pytest.importorskip("lunasentri_wmi")
    url = shared.server.url
    page = watched.page
    log_in(watched, url)
    with WsmanServer({USER: PASSWORD}, host=WINDOWS, port=5985) as windows:
        page.click("nav[aria-label=Sections] >> text=Agentless")
        page.click("nav[aria-label='Agentless monitoring'] >> text=Credential profiles")
        page.fill("#name", "lab account")
        page.select_option("#transport", "basic")
        page.fill("#username", USER)
        page.fill("#password", PASSWORD)
        page.uncheck("input[name=https]")
        page.click("text=Create credential profile")
        page.wait_for_selector("text=Credential profile created.")
        assert PASSWORD not in page.content()

        page.click("nav[aria-label='Agentless monitoring'] >> text=Discovery")
        page.fill("#name", "loopback")
        page.fill("#targets", WINDOWS)
        page.select_option("#credential_profile_id", label="lab account")
        page.fill("#ports", "5985")
        page.click("text=Create discovery profile")
        page.wait_for_selector("text=Discovery profile created.")

        windows.hang_requests()  # identification waits: the run stays under way
        page.click("#discovery button:has-text('Run')")
        page.wait_for_selector("#run-progress[data-state=running]")
        page.evaluate("window.notReloaded = true")
        page.wait_for_selector("#run-progress >> text=scanned 1 of 1 host(s), found 1")
        watched.shot("agentless-run-running")
        windows.hang_requests(False)
        page.wait_for_selector("#run-progress[data-state=done]")
        assert page.evaluate("window.notReloaded") is True  # htmx swapped the part in place
        assert HOST in page.inner_text("#run-devices").upper()
        watched.shot("agentless-run-done")

        page.click("#run-devices >> text=Create monitor")
        page.select_option("#credential_profile_id", label="lab account")
        page.select_option("#collector", "wmi")
        page.fill("#interval", "3600")
        page.click("text=Create monitor")
        page.wait_for_selector("text=Monitor created.")
        page.click("#monitors button:has-text('Poll now')")
        page.wait_for_selector("text=Poll of the wmi monitor: ok.")
        assert "ok" in page.inner_text("#monitors .poll-state")
        watched.shot("agentless-monitors")


@pytest.mark.parametrize("watched", [PHONE], indirect=True)
def test_a_phone_sees_the_agentless_pages_without_scrolling_sideways(
    shared: Shared, watched: Watched
) -> None:
    page = watched.page
    log_in(watched, shared.server.url)
    for name, path in {
        "agentless-phone": "/agentless",
        "agentless-new-monitor-phone": "/agentless/monitors/new",
        "agentless-devices-phone": "/agentless/devices",
        "agentless-discovery-phone": "/agentless/discovery",
        "agentless-credentials-phone": "/agentless/credentials",
    }.items():
        page.goto(shared.server.url + path)
        page.wait_for_selector("nav[aria-label='Agentless monitoring']")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide"
        watched.shot(name)
