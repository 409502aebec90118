"""The estate's own work in a real browser at a phone's width (Debian's chromium through
Playwright, as tests/test_web_browser.py): an alarm becomes a repair order in one click, the
electrician works and closes it, the guard records the resident's follow-up, the closed list
and the month's service report (this month, so far) count it; an overdue inspection alarms on the alarm screen; a handover shows exactly the
shift's events and prints."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from playwright.async_api import async_playwright, expect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway.clock import to_us  # noqa: E402
from gateway.ledger.maintenance import ensure_tasks  # noqa: E402
from gateway.maintenance.service_report import month_bounds  # noqa: E402
from test_maintenance_orders import running  # noqa: E402
from web_fixtures import ARTIFACTS, CHROMIUM, HOME, PASSWORDS, USERS, until  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
PHONE = {"width": 390, "height": 844}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory):
    async with running(tmp_path_factory.mktemp("maintenance-browser")) as console:
        await until(lambda: console.gw.rules is not None and console.gw.maintenance is not None, "started", 30)
        yield console


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM)
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def open_as(browser, site):
    contexts, errors = [], []

    async def open_(role: str):
        context = await browser.new_context(viewport=PHONE, base_url=site.url)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda e: errors.append(f"{role}: {e}"))
        await page.goto("/login")
        await page.locator('input[name="user"]').fill(USERS[role])
        await page.locator('input[name="password"]').fill(PASSWORDS[role])
        await page.locator('form[action="/login"] button[type="submit"]').click()
        await page.wait_for_url(f"**{HOME[role]}")
        return page

    yield open_
    for c in contexts:
        await c.close()
    assert not errors, errors


async def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"maintenance-{name}-phone.png"), full_page=True)


async def test_an_alarm_becomes_an_order_closed_followed_up_and_counted(site, open_as):
    alarm = await until(lambda: site.gw.rules.book.get("voltage-test", "B01-stair"), "the alarm")
    await until(lambda: site.ledger_rows("SELECT 1 FROM alerts WHERE id = ?", (alarm.id,)), "the ledger")
    guard = await open_as("guard")
    li = guard.locator(f'li.alarm[data-id="{alarm.id}"]')
    await expect(li).to_be_visible()
    await li.locator("form.order button").click()                      # one click
    await guard.wait_for_url(re.compile(r"/orders/\d+$"))
    oid = int(guard.url.rsplit("/", 1)[1])
    section = guard.locator(f'section[data-order="{oid}"]')
    await expect(section).to_have_attribute("data-state", "new")
    await expect(guard.locator("table.kv")).to_contain_text("B01-stair")
    await guard.locator('form[data-step="assign"] select[name="assignee"]').select_option(USERS["electrician"])
    await guard.locator('form[data-step="assign"] button').click()
    await expect(guard.locator(f'section[data-order="{oid}"]')).to_have_attribute("data-state", "assigned")
    await expect(guard.locator('form[data-step="arrive"]')).to_have_count(0)   # the electrician's step
    await _shot(guard, "order-assigned")

    elec = await open_as("electrician")
    await elec.goto("/orders")
    await elec.locator(f'tr[data-order="{oid}"] a').click()
    await elec.locator('form[data-step="arrive"] button').click()
    await expect(elec.locator(f'section[data-order="{oid}"]')).to_have_attribute("data-state", "on_site")
    await elec.locator('form[data-step="finish"] input[name="work_done"]').fill("紧固进线端子，电压恢复")
    await elec.locator('form[data-step="finish"] input[name="parts"]').fill("接线端子 2 个")
    await elec.locator('form[data-step="finish"] button').click()
    await expect(elec.locator(f'section[data-order="{oid}"]')).to_have_attribute("data-state", "done")
    await expect(elec.locator('form[data-step="follow_up"]')).to_have_count(0)  # the guard room calls back

    await guard.reload()
    await guard.locator('form[data-step="follow_up"] select[name="satisfaction"]').select_option("5")
    await guard.locator('form[data-step="follow_up"] input[name="note"]').fill("住户表示满意")
    await guard.locator('form[data-step="follow_up"] button').click()
    await expect(guard.locator(f'section[data-order="{oid}"]')).to_have_attribute("data-state", "followed_up")
    await expect(guard.locator("[data-satisfaction]")).to_have_attribute("data-satisfaction", "5")
    steps = [await r.get_attribute("data-step") for r in await guard.locator("table.steps tr[data-step]").all()]
    assert steps == ["create", "assign", "arrive", "finish", "follow_up"]
    await _shot(guard, "order-followed-up")
    # the order is counted among the closed ones, with its times against the targets
    await guard.goto("/orders")
    row = guard.locator(f'tr[data-order="{oid}"][data-state="followed_up"]')
    await expect(row).to_contain_text("5/5")
    assert site.ledger_rows("SELECT state, satisfaction FROM repair_orders WHERE id = ?", (oid,)) == \
        [("followed_up", 5)]

    # ... and the month's service report counts it: the current month, built so far
    admin = await open_as("admin")
    await _counted_in_the_service_report(site, admin, oid)


async def _counted_in_the_service_report(site, admin, oid: int) -> None:
    """The admin opens the service report of the order's month (this month, built so far) and
    finds the order's category counted as the ledger has it: reported, followed up, satisfaction."""
    tz = ZoneInfo(site.cfg.site.timezone)
    ((category, created_us),) = site.ledger_rows("SELECT category, created_us FROM repair_orders WHERE id = ?", (oid,))
    month = datetime.fromtimestamp(created_us / 1e6, tz).strftime("%Y-%m")
    start, end = month_bounds(month, tz)
    in_month = site.ledger_rows("SELECT state, satisfaction FROM repair_orders WHERE category = ? AND created_us >= ? "
                                "AND created_us < ?", (category, start, end))
    sat = [x for _, x in in_month if x is not None]
    await admin.goto("/service")
    await admin.locator('form.filters select[name="month"]').select_option(month)
    await admin.locator("form.filters button").click()
    await admin.wait_for_url(re.compile(rf"/service\?month={month}$"))
    page = admin.locator('section[data-page="service"]')
    await expect(page.locator("h1")).to_contain_text(month)
    await expect(page.locator("p.hint").first).to_have_text("本月尚未结束：截至现在的数字")   # the month so far
    row = page.locator(f'#order-table tr[data-key="{category}"]')
    await expect(row.locator('td[data-col="created"]')).to_have_text(str(len(in_month)))
    await expect(row.locator('td[data-col="followed_up"]')).to_have_text(
        str(sum(1 for st, _ in in_month if st == "followed_up")))
    await expect(row.locator('td[data-col="satisfaction"]')).to_have_text(f"{sum(sat) / len(sat):.2f}")
    assert ("followed_up", 5) in in_month
    await _shot(admin, "service-month-so-far")
    await admin.locator('a[href="/lang/en"]').first.click()              # back to the report, in English
    await admin.wait_for_url(re.compile(rf"/service\?month={month}$"))
    await expect(page.locator("p.hint").first).to_have_text("The month is not over: figures so far")
    await expect(row.locator('td[data-col="followed_up"]')).to_have_text(
        str(sum(1 for st, _ in in_month if st == "followed_up")))


async def test_an_overdue_inspection_alarms_on_the_alarm_screen(site, open_as):
    now = datetime.now(timezone.utc)
    ensure_tasks(site.ledger_path, [("fire", "2000-01", to_us(now - timedelta(days=40)),
                                     to_us(now - timedelta(days=2)))])
    alert = await until(lambda: site.gw.maintenance.book.get("maintenance:inspection", "fire@2000-01"),
                        "the overdue alarm", 15)
    elec = await open_as("electrician")
    li = elec.locator(f'li.alarm[data-id="{alert.id}"]')
    await expect(li).to_be_visible(timeout=10_000)
    await expect(li.locator(".msg")).to_contain_text("巡检逾期")
    await elec.goto("/inspections")
    (tid,) = site.ledger_rows("SELECT id FROM inspection_tasks WHERE plan = 'fire' AND period = '2000-01'")[0]
    await expect(elec.locator(f'tr[data-task="{tid}"][data-state="overdue"]')).to_have_count(1)
    await _shot(elec, "inspections")


async def test_a_handover_shows_exactly_the_shifts_events(site, open_as):
    guard = await open_as("guard")
    await guard.goto("/shift")
    await guard.locator('button[data-action="start"]').click()
    await expect(guard.locator("[data-on-duty]")).to_be_visible()
    (sid,) = site.ledger_rows("SELECT id FROM shifts WHERE ended_us IS NULL")[0]
    start_us = site.ledger_rows("SELECT started_us FROM shifts WHERE id = ?", (sid,))[0][0]
    # during the shift: a resident's report
    await guard.goto("/orders")
    form = guard.locator('form[data-form="resident"]')
    if not await form.is_visible():
        await guard.locator("details.new-order summary").click()
    await form.locator('input[name="household"]').fill("B02-1-101")
    await form.locator('input[name="what"]').fill("单元门禁读卡器不亮")
    await form.locator('select[name="category"]').select_option("facility")
    await form.locator("button").click()
    await guard.wait_for_url(re.compile(r"/orders/\d+$"))
    during = int(guard.url.rsplit("/", 1)[1])
    await guard.goto("/shift")
    await guard.locator('textarea[name="notes"]').fill("B02 单元门禁已报修，待电工处理")
    await guard.locator('button[data-action="handover"]').click()
    await expect(guard.locator(f'[data-waiting="{sid}"]')).to_be_visible()
    end_us = site.ledger_rows("SELECT ended_us FROM shifts WHERE id = ?", (sid,))[0][0]

    admin = await open_as("admin")
    await admin.goto("/shift")
    await admin.locator('button[data-action="confirm"]').click()
    await expect(admin.locator("[data-on-duty]")).to_be_visible()
    await admin.goto(f"/shift/{sid}/handover")
    page = admin.locator(f'section[data-page="handover"][data-shift="{sid}"]')
    await expect(page.locator("[data-notes]")).to_have_text("B02 单元门禁已报修，待电工处理")
    # exactly the shift's order steps, and exactly its alarms, as the ledger has them
    shown = {await r.get_attribute("data-order-step") for r in await page.locator("[data-order-step]").all()}
    expected = {f"{o}-{s}" for o, s in site.ledger_rows(
        "SELECT order_id, step FROM repair_steps WHERE ts_us >= ? AND ts_us < ?", (start_us, end_us))}
    assert shown == expected and f"{during}-create" in shown
    raised = {await r.get_attribute("data-alert") for r in await page.locator('[data-list="raised"] tr[data-alert]').all()}
    assert raised == {i for (i,) in site.ledger_rows("SELECT id FROM alerts WHERE raised_us >= ? AND raised_us < ?",
                                                     (start_us, end_us))}
    await expect(page.locator("[data-print]")).to_be_visible()
    await admin.emulate_media(media="print")
    await expect(admin.locator("header.top")).to_be_hidden()
    await _shot(admin, "handover")
