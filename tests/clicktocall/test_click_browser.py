"""The widget in a real browser (Debian's chromium + chromedriver, driven by selenium).

A small page hosts ``script.js`` the way Kommo does: requirejs ``define``, ``self.add_action``,
``self.$authorizedAjax`` adding a disposable token (signed by this test's "Kommo" with the
test secret) and a phone link. A click makes the fake AMI receive the Originate; a second
click within ``min_interval`` is refused, and the widget's message is saved as a screenshot.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from aiohttp import web
from click_setup import ORIGINATOR, click_config, self_signed
from click_tokens import token
from structlog.testing import capture_logs

from kommo_callerid.commands.widget import files
from kommo_callerid.sim.ami_server import FakeAmiServer
from kommo_callerid.sim.kommo_app import FakeKommo

from support import events, running_daemon, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Kommo card</title>
<style>body{font:16px sans-serif;margin:40px} a{font-size:20px}</style></head>
<body>
<h1>Contact: John Doe</h1>
<p>Phone: <a id="phone" href="#">+1 (830) 580-3077</a></p>
<script>
// Kommo's side, cut down: requirejs define, the widget object's helpers.
var langs = __LANG__;
window.define = function (deps, factory) {
  var Widget = factory({});
  var widget = new Widget();
  var actions = {};
  Widget.prototype = {};
  widget.i18n = function (key) { return langs[key]; };
  widget.get_settings = function () { return {server: "__SERVER__"}; };
  widget.add_action = function (kind, handler) { actions[kind] = handler; };
  widget.$authorizedAjax = function (options) {
    var done = [], fail = [];
    fetch("/token").then(function (r) { return r.text(); }).then(function (tok) {
      return fetch(options.url, {
        method: options.method,
        headers: {"X-Auth-Token": tok, "Content-Type": "application/x-www-form-urlencoded"},
        body: new URLSearchParams(options.data).toString()
      });
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) { done.forEach(function (f) { f(body); }); }
        else { fail.forEach(function (f) { f({status: response.status, responseJSON: body}); }); }
      });
    }, function () { fail.forEach(function (f) { f({status: 0}); }); });
    var promise = {
      done: function (f) { done.push(f); return promise; },
      fail: function (f) { fail.push(f); return promise; }
    };
    return promise;
  };
  widget.callbacks.init();
  widget.callbacks.render();
  document.getElementById("phone").addEventListener("click", function (e) {
    e.preventDefault();
    actions.phone({value: e.target.textContent});
  });
  window.widgetReady = true;
};
</script>
<script src="/script.js"></script>
</body></html>
"""


async def _page_server(settings: dict[str, str]) -> tuple[web.AppRunner, int]:
    """The host page; ``settings["server"]`` is read per request (the daemon's port comes
    later than the page's, which the daemon must know as an allowed origin)."""
    widget = files()
    lang = json.dumps(json.loads(widget["i18n/en.json"]))

    async def page(request: web.Request) -> web.Response:
        html = PAGE.replace("__LANG__", lang).replace("__SERVER__", settings["server"])
        return web.Response(text=html, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        return web.Response(body=widget["script.js"], content_type="application/javascript")

    async def disposable(request: web.Request) -> web.Response:
        return web.Response(text=token())

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/script.js", script)
    app.router.add_get("/token", disposable)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def _drive(page_url: str, screenshot: Path, profile: Path) -> tuple[str, str]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--ignore-certificate-errors",  # the daemon's test certificate is self-signed
        f"--user-data-dir={profile}",
        "--window-size=900,500",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(page_url)
        wait = WebDriverWait(driver, 20)
        wait.until(lambda d: d.execute_script("return window.widgetReady === true"))
        message = "kommo-callerid-message"

        def shown(fragment: str) -> bool:
            found = driver.find_elements(By.ID, message)
            return bool(found) and fragment in found[0].text

        driver.find_element(By.ID, "phone").click()
        wait.until(lambda d: shown("to dial"))
        first = driver.find_element(By.ID, message).text
        driver.find_element(By.ID, "phone").click()
        wait.until(lambda d: shown("wait a moment"))
        second = driver.find_element(By.ID, message).text
        driver.save_screenshot(str(screenshot))
        return first, second
    finally:
        driver.quit()


async def test_a_click_in_the_browser_rings_the_phone(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with FakeAmiServer(users=ORIGINATOR) as ami, FakeKommo() as kommo:
        ami.originate_delay = 60.0  # the phone rings on: the widget says so before it stops
        settings = {"server": ""}
        runner, page_port = await _page_server(settings)
        page_origin = f"http://127.0.0.1:{page_port}"
        config = click_config(ami, kommo, cert, key, public={"origins": [page_origin]})
        try:
            with capture_logs() as logs:
                async with running_daemon(config) as daemon:
                    await wait_for(lambda: bool(events(logs, "clicktocall.account")))
                    settings["server"] = f"https://127.0.0.1:{daemon.public_port}"
                    screenshot = tmp_path / "widget-refused-click.png"
                    first, second = await asyncio.to_thread(
                        _drive, f"http://127.0.0.1:{page_port}/", screenshot, tmp_path / "profile"
                    )
        finally:
            await runner.cleanup()
    print(f"\nscreenshot of the refused click: {screenshot}")
    assert "ringing; answer it to dial 18305803077" in first
    assert "wait a moment" in second
    [(_, action)] = ami.originates
    assert action["channel"] == "Local/101@from-internal"
    assert action["exten"] == "18305803077"
    assert screenshot.stat().st_size > 1000
