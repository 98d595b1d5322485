"""The web console (``GET /console``) in a real browser: the system's Chromium, driven by
playwright, against a real ``eventbus serve``.

A user signs in, makes a topic, produces, watches the partition tree change as the topic is
split and merged over the API, sees a group's lag fall as it consumes, and an admin revokes
a key, which signs out the console that used it. No page logs an error of its own, and
markup sent as a record's key or value is shown as text and never runs. The screenshots
of the README (``docs/images/console-*.png``) are taken here.

Chromium is found as ``chromium`` on the PATH, or at ``EVENTBUS_CHROMIUM``; without it (or
without playwright) the browser tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.servers import ROOT, ServerProcess

pytestmark = pytest.mark.client_side("the console's pages in a browser")

IMAGES = ROOT / "docs" / "images"
CHROMIUM = os.environ.get("EVENTBUS_CHROMIUM") or shutil.which("chromium")
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 20000  # how long a page may take to show what the test waits for

try:
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]


@dataclass
class Server:
    process: ServerProcess
    url: str
    tenant_key: str
    admin_key: str

    def call(self, method: str, path: str, body: Any = None, key: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {key or self.tenant_key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - loopback
            raw = answer.read()
        return json.loads(raw) if raw else None

    def produce(self, topic: str, records: list[dict[str, Any]]) -> Any:
        return self.call("POST", f"/v1/topics/{topic}/records", {"records": records})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("console") / "data"
    process = ServerProcess(data_dir, args=["--log-level", "WARNING"]).start()
    try:
        keys = process.keys
        yield Server(process, process.url, keys["EVENTBUS_API_KEY"], keys["EVENTBUS_ADMIN_KEY"])
    finally:
        assert process.stop() == 0, process.stderr()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        pytest.skip("no chromium on the PATH (apt-get install chromium, or set EVENTBUS_CHROMIUM)")
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as driver:
        # --no-sandbox: the suite may run as root, where Chromium's sandbox cannot start.
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    """A page, with every error it logged and every address it asked for."""

    page: Page
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def unexpected(self, *allowed: str) -> list[str]:
        """The errors logged, but those naming one of ``allowed`` (a failed request's
        status and address, which the browser itself logs for an expected refusal)."""
        return [e for e in self.errors if not any(a in e for a in allowed)]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Any]:
    opened: list[Watched] = []

    def open_page(viewport: Any = LAPTOP) -> Watched:
        context = browser.new_context(viewport=viewport)
        watched = Watched(context.new_page())
        watched.page.on("console", watched.on_console)
        watched.page.on("pageerror", lambda error: watched.errors.append(f"uncaught: {error}"))
        watched.page.on("request", lambda request: watched.urls.append(request.url))
        watched.page.set_default_timeout(WAIT_MS)
        opened.append(watched)
        return watched

    yield open_page
    for watched in opened:
        watched.page.context.close()


def sign_in(watched: Watched, server: Server, key: str) -> None:
    page = watched.page
    page.goto(server.url + "/console")
    # The key field has the focus: a keyboard alone signs in.
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMAGES / f"console-{name}.png"), full_page=full_page)


def test_the_console_is_served_with_a_strict_policy(server: Server) -> None:
    for path, media in (("/console", "text/html"), ("/console/app.js", "text/javascript")):
        with urllib.request.urlopen(server.url + path, timeout=10) as answer:  # noqa: S310
            headers = answer.headers
            assert answer.status == 200
        assert headers["Content-Type"].startswith(media)
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy
        assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        etag = headers["ETag"]
        again = urllib.request.Request(server.url + path, headers={"If-None-Match": etag})  # noqa: S310
        with pytest.raises(urllib.error.HTTPError) as not_modified:
            urllib.request.urlopen(again, timeout=10)  # noqa: S310
        assert not_modified.value.code == 304
        not_modified.value.close()
    # Only the console's own files are served, with no key, and nothing beside them.
    for path in ("/console/nothing.js", "/console/..%2Fconfig.py", "/console/%2e%2e"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + path, timeout=10)  # noqa: S310
        assert missing.value.code == 404
        missing.value.close()


def test_a_topic_is_made_produced_to_and_its_tree_follows_splits_and_merges(
    server: Server, open_page: Any
) -> None:
    watched = open_page()
    page = watched.page
    page.goto(server.url + "/console")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    screenshot(page, "signin", full_page=False)
    sign_in(watched, server, server.tenant_key)

    page.get_by_label("Name").fill("orders")
    page.get_by_role("button", name="Create topic").click()
    expect(page.locator('tr[data-topic="orders"]')).to_be_visible()
    assert server.call("GET", "/v1/topics/orders")["name"] == "orders"

    page.get_by_role("link", name="orders").click()
    # The tree follows the topic's event stream, which the server has.
    expect(page.get_by_text("Live: the server streams this topic's changes.")).to_be_visible()
    tree = page.locator("#lineage")
    expect(tree.locator("[data-partition]")).to_have_count(1)
    page.get_by_label("Key (optional)").fill("user-1")
    page.get_by_label("Value").fill('{"total": 42}')
    page.get_by_role("button", name="Produce").click()
    expect(page.get_by_text("Written to P0 at offset 0.")).to_be_visible()
    first = server.call("GET", "/v1/topics/orders/partitions/0/records")["records"][0]
    assert (first["key"], first["value"]) == ("user-1", '{"total": 42}')

    # A split over the API: the page shows the two children and the parent sealed.
    server.call("POST", "/v1/topics/orders/partitions/0/split")
    expect(tree.locator('[data-partition="0"]')).to_have_attribute("data-state", "sealed")
    expect(tree.locator('[data-partition="1"][data-state="active"]')).to_be_visible()
    expect(tree.locator('[data-partition="2"][data-state="active"]')).to_be_visible()
    # ... and a merge of the two brings a third generation.
    server.call("POST", "/v1/topics/orders/merge", {"partitions": [1, 2]})
    expect(tree.locator('[data-partition="3"][data-state="active"]')).to_be_visible()
    expect(page.locator('#partitions tr[data-partition="1"]')).to_have_attribute(
        "data-state", "sealed"
    )
    server.call("POST", "/v1/topics/orders/partitions/3/split")
    expect(tree.locator('[data-partition="5"][data-state="active"]')).to_be_visible()

    # Tail a partition from its start: it shows what it holds, then what comes.
    answers = [
        server.produce("orders", [{"key": f"user-{n}", "value": f"order {n}"}]) for n in range(12)
    ]
    partition = answers[0]["offsets"][0]["partition"]
    assert partition in (4, 5)
    page.get_by_label("Partition", exact=True).select_option(str(partition))
    page.get_by_label("Start at").select_option("start")
    page.get_by_role("button", name="Start tail").click()
    expect(page.locator("#tail li").first).to_be_visible()
    values = page.locator("#tail li .value").all_inner_texts()
    assert "order 0" in values and all(v.startswith("order ") for v in values)
    server.produce("orders", [{"key": "user-0", "value": "late order"}])  # the same partition
    expect(page.locator("#tail li .value").first).to_have_text("late order")
    # Some traffic for a few seconds, so that the picture has throughput in it.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        server.produce("orders", [{"key": f"user-{n}", "value": "x" * 40} for n in range(20)])
        time.sleep(0.05)
    expect(page.locator('#partitions tr[data-partition="4"] polyline')).to_have_attribute(
        "points", re.compile(r"\S+ \S+")
    )
    screenshot(page, "topic")

    assert watched.unexpected() == []
    # The key went in headers only: no address the page asked for holds it.
    assert not [url for url in watched.urls if server.tenant_key in url]
    stored = page.evaluate("[sessionStorage.length, localStorage.length]")
    assert stored[0] >= 1 and stored[1] == 0


def test_markup_in_a_record_is_shown_as_text_and_never_runs(server: Server, open_page: Any) -> None:
    server.call("PUT", "/v1/topics/markup", {})
    attacks = [
        "<script>window.__ran = 'script'</script>",
        '<img src="x" onerror="window.__ran = \'img\'">',
        '"><svg onload="window.__ran = \'svg\'"></svg>',
    ]
    server.produce(
        "markup",
        [{"key": "<b>key</b>", "value": attack} for attack in attacks],
    )
    watched = open_page()
    page = watched.page
    sign_in(watched, server, server.tenant_key)
    page.goto(server.url + "/console#/topics/markup")
    page.get_by_label("Start at").select_option("start")
    page.get_by_role("button", name="Start tail").click()
    expect(page.locator("#tail li")).to_have_count(len(attacks))
    shown = page.locator("#tail li .value").all_inner_texts()
    assert sorted(shown) == sorted(attacks)
    assert page.locator("#tail li .key").first.inner_text() == "<b>key</b>"
    assert page.locator("#tail img, #tail script, #tail b, #tail li svg").count() == 0
    page.wait_for_timeout(500)  # an onerror would have fired by now
    assert page.evaluate("window.__ran") is None
    assert watched.unexpected() == []


def test_a_hot_key_shows_while_one_key_carries_the_load(server: Server, open_page: Any) -> None:
    # A low split threshold: one key at about 100 records/s is hot, and cannot be split.
    scaling = {"split_records_per_s": 20, "split_bytes_per_s": 10**9, "window_s": 1}
    scaling["cooldown_s"] = 0
    server.call("PUT", "/v1/topics/celebs", {"autoscale": scaling})
    watched = open_page()
    page = watched.page
    sign_in(watched, server, server.tenant_key)
    page.goto(server.url + "/console#/topics/celebs")
    expect(page.get_by_text("No hot keys right now.")).to_be_visible()
    hot = page.locator("#hot-keys td.data", has_text="<i>star</i>")
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline and hot.count() == 0:
        server.produce("celebs", [{"key": "<i>star</i>", "value": "v"}] * 10)
        page.wait_for_timeout(100)
    expect(hot).to_have_count(1)  # as text: a key is data, never markup
    row = page.locator("#hot-keys tbody tr").first
    expect(row.locator("td").nth(1)).to_have_text("P0")
    assert page.locator("#hot-keys i").count() == 0
    assert watched.unexpected() == []


def test_a_groups_lag_falls_as_it_consumes(server: Server, open_page: Any) -> None:
    server.call("PUT", "/v1/topics/payments", {})
    server.produce("payments", [{"key": f"k{n}", "value": f"payment {n}"} for n in range(10)])
    group = "/v1/topics/payments/groups/billing"
    joined = server.call(
        "POST", group + "/fetch", {"auto_offset_reset": "earliest", "max_records": 4}
    )
    assert len(joined["records"]) == 4

    watched = open_page()
    page = watched.page
    sign_in(watched, server, server.tenant_key)
    page.goto(server.url + "/console#/topics/payments")
    # The topic page lists its groups with their lag, and links to each.
    listed = page.locator('#groups tr[data-group="billing"] td[data-lag]')
    expect(listed).to_have_attribute("data-lag", "10")
    page.get_by_role("link", name="billing").click()
    lag = page.locator("#group-lag")
    expect(lag).to_have_attribute("data-lag", "10")  # fetched, not committed yet
    expect(page.locator("#members td").first).to_have_text(joined["member_id"])

    # The next fetch commits the first four (auto_commit) and takes the rest.
    member = {"member_id": joined["member_id"], "max_records": 100}
    rest = server.call("POST", group + "/fetch", member)
    assert len(rest["records"]) == 6
    expect(lag).to_have_attribute("data-lag", "6")
    offsets = [{"partition": 0, "offset": 10}]
    server.call("POST", group + "/commit", {"member_id": joined["member_id"], "offsets": offsets})
    expect(lag).to_have_attribute("data-lag", "0")
    screenshot(page, "group")
    server.call("POST", group + "/leave", {"member_id": joined["member_id"]})
    assert watched.unexpected() == []


def test_an_admin_manages_keys_and_a_revoked_key_signs_its_console_out(
    server: Server, open_page: Any
) -> None:
    made = server.call("POST", "/v1/admin/tenants", {"name": "acme"}, key=server.admin_key)
    tenant = open_page()
    sign_in(tenant, server, made["api_key"])
    expect(tenant.page.get_by_role("heading", name="Topics")).to_be_visible()

    admin = open_page()
    page = admin.page
    sign_in(admin, server, server.admin_key)
    expect(page.locator('tr[data-tenant="acme"]')).to_be_visible()
    page.get_by_role("link", name="acme").click()
    expect(page.locator(f'tr[data-key="{made["key_id"]}"]')).to_be_visible()
    expect(page.locator("#bill-total")).to_have_text("0.00")

    # A quota set here is the tenant's.
    page.get_by_label("Quota", exact=True).select_option("max_topics")
    page.get_by_label("Value", exact=True).fill("7")
    page.get_by_role("button", name="Set quota").click()
    expect(page.locator('tr[data-quota="max_topics"] td').first).to_have_text("7")
    got = server.call("GET", "/v1/admin/tenants/acme", key=server.admin_key)
    assert got["quotas"]["max_topics"] == 7

    screenshot(page, "tenant")
    # A key made here works, shown once.
    page.get_by_label("Scope").select_option("consume")
    page.get_by_role("button", name="Make key").click()
    secret = page.locator("[data-secret]").inner_text()
    assert server.call("GET", "/v1/topics", key=secret) == {"topics": [], "next_after": None}

    # Revoking the first key signs out the console that uses it.
    page.locator(f'button[data-key="{made["key_id"]}"]').click()
    page.get_by_role("button", name=f"Revoke {made['key_id']}").click()
    expect(page.locator(f'tr[data-key="{made["key_id"]}"]')).to_have_count(0)
    expect(tenant.page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(tenant.page.get_by_role("alert")).to_contain_text("no longer valid")
    assert tenant.page.evaluate("sessionStorage.length") == 0

    # The browser itself logs the refusals that told the console: the revoked key's 401,
    # and the admin key's 403 on a tenant route, by which sign-in knows it for an admin's.
    assert tenant.unexpected("status of 401") == []
    assert admin.unexpected("status of 403 (Forbidden) (" + server.url + "/v1/topics") == []


def test_the_console_fits_a_phone(server: Server, open_page: Any) -> None:
    server.call("PUT", "/v1/topics/mobile", {})
    server.call("POST", "/v1/topics/mobile/partitions/0/split")
    server.produce("mobile", [{"key": f"k{n}", "value": f"v{n}"} for n in range(20)])
    watched = open_page(PHONE)
    page = watched.page
    sign_in(watched, server, server.tenant_key)
    page.goto(server.url + "/console#/topics/mobile")
    expect(page.locator('#lineage [data-partition="2"]')).to_be_visible()
    # Nothing is wider than the screen: wide tables scroll within their own box.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "phone", full_page=False)
    assert watched.unexpected() == []
