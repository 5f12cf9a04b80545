"""The operator dashboard in Chromium: login with the admin token, live round progress without
reloading, the canary's state and verdict, the decision log and the history chart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from protocol import wire
from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, random_delta, serve

pytestmark = pytest.mark.browser

def _report(dev: FakeDevice, task: wire.Task, cand_top3: float, stable_top3: float):
    cand, stable = task.evaluate_version_ids
    # issue-12: the canary decides on word-level counts (here top-3 hits of 100 words, as next-piece)
    return dev.evaluate(task.candidate_version_id, [
        wire.VersionMetrics(cand, loss_sum=300.0, top1=cand_top3 / 2, top3=cand_top3, count=100.0,
                            words=100, word_top1=int(cand_top3) // 2, word_top3=int(cand_top3), saved=0, typed=200),
        wire.VersionMetrics(stable, loss_sum=310.0, top1=stable_top3 / 2, top3=stable_top3, count=100.0,
                            words=100, word_top1=int(stable_top3) // 2, word_top3=int(stable_top3), saved=0,
                            typed=200)])


def test_dashboard_login_live_round_progress_canary_and_decisions(browser, tmp_path):
    from playwright.sync_api import expect

    cfg = make_config(tmp_path, canary_fraction=1.0, canary_min_reports=2, goal_count=2, min_count=2,
                      noise_multiplier=0.01)
    with serve(cfg) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(3)]
        rid = s.coord.start_round()
        errors: list[str] = []
        ctx = browser.new_context(viewport={"width": 1200, "height": 1600})
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        page.on("response", lambda r: errors.append(f"{r.status} {r.url}")
                if r.status == 404 and not r.url.endswith("/favicon.ico") else None)
        page.set_default_timeout(15_000)
        try:
            page.goto(s.url + "/dashboard?refresh_ms=500")
            # Login: nothing shown without the token; a wrong one is refused.
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#panels")).to_be_hidden()
            page.fill("#token", "not-the-token")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("did not accept")
            page.fill("#token", cfg.admin_token)
            page.click("#login button[type=submit]")
            expect(page.locator("#panels")).to_be_visible()
            expect(page.locator("#round-id")).to_have_text(str(rid))
            expect(page.locator("#t-accepted")).to_have_text("0 of goal 2 (min 2)")
            expect(page.locator("#devices")).to_have_text("3 · 0")
            expect(page.locator("#round-deadline")).to_contain_text("s left")

            # Live: devices check in and upload; the page follows without a reload.
            tasks = [d.checkin() for d in devices[:2]]
            expect(page.locator("#t-selected")).to_have_text("2 of up to 3")
            r = devices[0].upload(random_delta(0, 0.01), round_id=rid, base=tasks[0].base_version_id, examples=10)
            assert r.status_code == 200
            expect(page.locator("#t-accepted")).to_have_text("1 of goal 2 (min 2)")
            bad = devices[1].upload(random_delta(1, 0.01), round_id=rid, base=tasks[1].base_version_id,
                                    examples=10, encoding="float16", body=b"not safetensors")
            assert bad.status_code >= 400
            expect(page.locator("#rejections tbody")).to_contain_text("malformed")
            r = devices[1].upload(random_delta(1, 0.01), round_id=rid, base=tasks[1].base_version_id, examples=10)
            assert r.status_code == 200
            # The round closes into a candidate; the canary waits for its reports.
            expect(page.locator("#round-status")).to_have_text("done")
            cand = s.coord.get_round(rid)["result_version_id"]
            expect(page.locator("#candidate")).to_have_text(cand)
            t = devices[0].checkin()
            assert t.kind == wire.TASK_EVALUATE
            assert _report(devices[0], t, 41, 40).status_code == 200
            expect(page.locator("#canary-state")).to_contain_text("wait (1 of 2 canary devices scored words)")
            t = devices[2].checkin()
            assert _report(devices[2], t, 42, 40).status_code == 200
            # Promoted: the decision log says who, when and why; the chart has the point.
            expect(page.locator("#stable")).to_have_text(cand)
            row = page.locator("#decisions tbody tr").first
            expect(row).to_contain_text(cand)
            expect(row).to_contain_text("promote")
            expect(row).to_contain_text("auto")
            expect(row).to_contain_text("median per-device word top-3 difference +0.0150")  # issue-12's rule
            expect(page.locator("#versions tbody tr").first).to_contain_text("41.5%")
            expect(page.locator("#eps-local")).not_to_have_text("–")
            # What the sampled epsilon assumes: each round's draw, not a population (issue 12's enrolled sybils)
            expect(page.locator("#population")).to_contain_text("sampled ε: each round's q is each round's slots")
            page.wait_for_function("() => Chart.getChart(document.querySelector('#history')) !== undefined")
            axis = page.locator("#history").evaluate(
                "c => { const ch = Chart.getChart(c); return [ch.options.scales.y.title.text, "
                "ch.data.labels, ch.data.datasets[0].data]; }")
            assert axis[0] == "top-3 accuracy (%)" and axis[1] == [cand] and axis[2] == [41.5]
            before = int(page.locator("#updated").get_attribute("data-refreshes"))
            page.wait_for_function(f"() => Number(document.querySelector('#updated').dataset.refreshes) > {before + 1}")
            artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
            # Log out: the data goes away with the token.
            page.click("#logout")
            expect(page.locator("#panels")).to_be_hidden()
            assert page.evaluate("() => sessionStorage.length") == 0
        finally:
            ctx.close()
    assert not errors, errors       # no CSP violations or script errors


def test_dashboard_login_says_when_wrong_tokens_have_used_up_the_address_budget(browser, tmp_path):
    from playwright.sync_api import expect

    with serve(make_config(tmp_path, admin_failures_per_minute=0.01, admin_failures_burst=1)) as s:
        page = browser.new_page()
        try:
            page.goto(s.url + "/dashboard")
            page.fill("#token", "a-wrong-guess")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text("did not accept")
            page.fill("#token", "another-wrong-guess")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-error")).to_contain_text(
                re.compile(r"too many wrong admin tokens from this address; try again in \d+ s"))
            expect(page.locator("#panels")).to_be_hidden()
        finally:
            page.close()


def test_dashboard_names_a_word_discovery_round(browser, tmp_path, exported_version):
    from playwright.sync_api import expect

    cfg = make_config(tmp_path)
    with serve(cfg) as s:
        s.coord.import_version(exported_version)
        rid = s.coord.start_round(secure_aggregation=True, discover_words=8)
        page = browser.new_context().new_page()
        page.set_default_timeout(15_000)
        try:
            page.goto(s.url + "/dashboard?refresh_ms=500")
            page.fill("#token", cfg.admin_token)
            page.click("#login button[type=submit]")
            expect(page.locator("#round-id")).to_have_text(str(rid))
            # the secure round's step shows (stuck on its keys step, it read like a plain round waiting)
            expect(page.locator("#round-status")).to_have_text("open · word discovery, secure (keys step)")
            expect(page.locator("#round-history")).to_have_text("1 rounds: 0 done, 0 failed")
            s.coord.close_round(rid, force=True)       # no device voted: the round fails, and says so
            expect(page.locator("#round-status")).to_have_text("failed · word discovery, secure")
            expect(page.locator("#round-history")).to_have_text("1 rounds: 0 done, 1 failed")
            assert s.coord.get_round(rid)["secure_phase"] is None    # ended before any keys: no step
        finally:
            page.context.close()


def test_logging_out_during_a_refresh_shows_nothing_and_the_refresh_is_capped(browser, tmp_path):
    """An answer that arrived after "Log out" put the panels back, frozen, with a Log out button;
    and refresh_ms past 2^31 wrapped the browser's timer, which then fired continuously."""
    from playwright.sync_api import expect

    cfg = make_config(tmp_path)
    with serve(cfg) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        ctx = browser.new_context()
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        try:
            asked: list[str] = []
            page.on("request", lambda r: asked.append(r.url) if "/v1/admin/dashboard" in r.url else None)
            page.goto(s.url + "/dashboard?refresh_ms=2147483648")
            page.fill("#token", cfg.admin_token)
            page.click("#login button[type=submit]")
            expect(page.locator("#panels")).to_be_visible()
            page.wait_for_timeout(1500)
            assert len(asked) <= 4, len(asked)              # login, the first refresh: not hundreds
            page.goto(s.url + "/dashboard?refresh_ms=500")
            expect(page.locator("#panels")).to_be_visible()

            held: list = []
            page.route("**/v1/admin/dashboard", lambda route: held.append(route))   # the next refresh waits
            page.wait_for_function("() => true")
            for _ in range(50):
                if held:
                    break
                page.wait_for_timeout(100)
            assert held                                     # a refresh is on its way ...
            page.click("#logout")                           # ... and the operator logs out
            held[0].continue_()                             # then its answer arrives
            page.wait_for_timeout(1000)
            expect(page.locator("#panels")).to_be_hidden()
            expect(page.locator("#login")).to_be_visible()
        finally:
            ctx.close()


def test_dashboard_says_what_stops_the_service_above_everything(browser, tmp_path, monkeypatch):
    """A full disk refused every upload while the page showed a round waiting for devices; an
    answer of 503 (the database busy) read "coordinator unreachable" in small print, beside panels
    that went on showing their last figures."""
    from playwright.sync_api import expect

    from coordinator import blobs, dashboard
    from coordinator.api import admin
    from coordinator.errors import ApiError

    with serve(make_config(tmp_path)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        page = browser.new_page()
        page.set_default_timeout(15_000)
        try:
            page.goto(s.url + "/dashboard?refresh_ms=500")
            page.fill("#token", s.config.admin_token)
            page.click("#login button[type=submit]")
            expect(page.locator("#panels")).to_be_visible()
            expect(page.locator("#trouble")).to_be_hidden()
            monkeypatch.setattr(dashboard, "free_bytes", lambda path: 3 * 2**20)
            expect(page.locator("#trouble")).to_contain_text("disk has 3 MiB free")
            monkeypatch.setattr(dashboard, "free_bytes", blobs.free_bytes)
            expect(page.locator("#trouble")).to_be_hidden()

            def busy(c):
                raise ApiError(503, wire.E_INTERNAL, "the database is busy; retry later", retry_after=5)

            monkeypatch.setattr(admin, "dashboard_data", busy)
            expect(page.locator("#trouble")).to_contain_text("the coordinator says: the database is busy")
            expect(page.locator("#panels")).to_have_class(re.compile("stale"))
            monkeypatch.undo()
            expect(page.locator("#trouble")).to_be_hidden()
            expect(page.locator("#panels")).not_to_have_class(re.compile("stale"))
        finally:
            page.close()
