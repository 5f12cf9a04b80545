"""Canary rollout: a good candidate is promoted, a degraded one rejected; devices follow."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import requests
from sqlalchemy import text

from coordinator import rollout
from protocol import wire
from tests.helpers.coordinator_fakes import FakeDevice, make_config, make_version, random_delta, serve


def _candidate_from_round(s, devices, scale: float) -> str:
    rid = s.coord.start_round(goal_count=2, min_count=2)
    for i, d in enumerate(devices[:2]):
        t = d.checkin()
        assert t.kind == wire.TASK_TRAIN
        assert d.upload(random_delta(i, scale), round_id=rid, base=t.base_version_id, examples=10).status_code == 200
    return s.coord.get_round(rid)["result_version_id"]


def _metrics(vid: str, top3: int, words: int = 100, count: float = 100.0) -> wire.VersionMetrics:
    return wire.VersionMetrics(vid, loss_sum=300.0, top1=min(top3, count) / 2, top3=min(top3, count), count=count,
                               words=words, word_top1=top3 // 2, word_top3=top3, saved=top3, typed=2 * words)


def _report(dev, task: wire.Task, cand_top3: int, stable_top3: int, count: float = 100.0, words: int = 100):
    cand, stable = task.evaluate_version_ids
    return dev.evaluate(task.candidate_version_id, [_metrics(cand, cand_top3, words, count),
                                                   _metrics(stable, stable_top3, words, count)])


@pytest.fixture
def world(tmp_path):
    with serve(make_config(tmp_path, canary_fraction=0.5, canary_min_reports=2, canary_tolerance=0.01)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(8)]
        # Device ids are random: enroll more until both cohorts are populated (deterministic outcome).
        while sum(rollout.in_canary(d.device_id, 0.5) for d in devices) < 3 or all(
                rollout.in_canary(d.device_id, 0.5) for d in devices):
            devices.append(FakeDevice(s.url, key))
        canaries = [d for d in devices if rollout.in_canary(d.device_id, 0.5)]
        others = [d for d in devices if not rollout.in_canary(d.device_id, 0.5)]
        yield s, devices, canaries, others


def test_good_candidate_is_promoted_to_everyone(world):
    s, devices, canaries, others = world
    cand = _candidate_from_round(s, devices, 0.01)
    t_other = others[0].checkin()
    assert t_other.use_version_id == "v0000" and t_other.kind != wire.TASK_EVALUATE
    t1 = canaries[0].checkin()
    assert t1.kind == wire.TASK_EVALUATE and t1.use_version_id == cand
    assert _report(canaries[0], t1, cand_top3=41, stable_top3=40).status_code == 200
    assert s.admin("GET", "/v1/admin/canary").json()["would"] == "wait"
    # Same device again: refused, it counts once.
    assert _report(canaries[0], t1, cand_top3=41, stable_top3=40).status_code == 409
    assert s.admin("GET", "/v1/admin/canary").json()["numbers"]["reports"] == 1
    # A non-canary device may not vote.
    assert _report(others[0], t1, 90, 10).status_code == 403
    t2 = canaries[1].checkin()
    assert _report(canaries[1], t2, cand_top3=40, stable_top3=40).status_code == 200
    versions = {v["version_id"]: v for v in s.admin("GET", "/v1/admin/versions").json()["versions"]}
    assert versions[cand]["status"] == "stable" and versions["v0000"]["status"] == "retired"
    retired = versions["v0000"]["decisions"][-1]   # the retired version's history says why (it said "import")
    assert (retired["action"], retired["actor"], retired["reason"]) == ("retire", "auto", f"{cand} became stable")
    decision = versions[cand]["decisions"][-1]
    assert decision["action"] == "promote" and decision["actor"] == "auto"
    assert decision["numbers"]["candidate"]["word_top3_acc"] == pytest.approx(81 / 200)
    assert decision["numbers"]["stable"]["word_top3_acc"] == pytest.approx(80 / 200)
    assert decision["numbers"]["word_top3_diff"] == pytest.approx(0.005)
    for d in (others[0], canaries[0]):
        assert d.checkin().use_version_id == cand
    # The dashboard's and the table's summaries say what the full records say, without the privacy
    # history and manifest metrics (whose parsing cost the rounds squared on every refresh).
    full, summaries = s.coord.list_versions(), s.coord.version_summaries()
    assert [v["version_id"] for v in summaries] == [v["version_id"] for v in full] and len(full) == 2
    for whole, summary in zip(full, summaries, strict=True):
        assert summary.pop("epsilon_local") == whole["privacy"].get("epsilon_local", whole["epsilon"])
        assert summary == {k: v for k, v in whole.items() if k not in ("privacy", "metrics")}
    assert versions[cand]["canary_reports"] == 2 and versions[cand]["privacy"]["epsilon_local"] > 0
    with s.coord.engine.begin() as conn:   # a row a release before migration 0007 wrote after it ran
        conn.execute(text("UPDATE versions SET epsilon_local = NULL, epsilon = 0.5 WHERE id = :v"), {"v": cand})
    (again,) = [v for v in s.coord.version_summaries() if v["version_id"] == cand]
    assert again["epsilon_local"] == versions[cand]["privacy"]["epsilon_local"] and again["epsilon"] == 0.5
    assert f'fedkeys_epsilon_local{{role="stable",version="{cand}"}} ' \
           f'{float(versions[cand]["privacy"]["epsilon_local"])}' in s.admin("GET", "/metrics").text
    page = s.admin("GET", "/v1/admin/dashboard").json()
    assert any(v["version_id"] == cand and v["candidate_top3_pct"] == pytest.approx(40.5) for v in page["versions"])
    assert page["rounds"] == {"total": 1, "done": 1, "failed": 0}
    assert page["rejections_total"] == dict(Counter(x["reason"] for x in s.coord.rejections()["rejections"]))
    assert page["decisions"][0]["action"] == "promote" and page["decisions"][0]["actor"] == "auto"
    assert requests.get(s.url + "/v1/admin/dashboard", timeout=5).status_code == 401     # no token, no data
    assert 'id="login"' in requests.get(s.url + "/dashboard", timeout=5).text


def test_degraded_candidate_is_rejected_and_canaries_roll_back(world):
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    for d in canaries[:2]:
        t = d.checkin()
        assert t.use_version_id == cand
        assert _report(d, t, cand_top3=20, stable_top3=40).status_code == 200   # much worse
    versions = {v["version_id"]: v for v in s.admin("GET", "/v1/admin/versions").json()["versions"]}
    assert versions[cand]["status"] == "rejected" and versions["v0000"]["status"] == "stable"
    d = versions[cand]["decisions"][-1]
    assert d["action"] == "reject" and d["numbers"]["word_top3_diff"] == pytest.approx(-0.2)
    t = canaries[0].checkin()
    assert t.use_version_id == "v0000" and t.kind != wire.TASK_EVALUATE   # rolled back


def test_nonfinite_report_is_refused_not_a_veto(world):
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    t = canaries[0].checkin()
    assert t.kind == wire.TASK_EVALUATE
    body = wire.EvaluationReport(cand, (_metrics(cand, 40), _metrics("v0000", 40))).to_dict()
    body["results"][0]["loss_sum"] = "nan"
    r = requests.post(s.url + wire.PATH_EVALUATIONS, json=body, headers=canaries[0].headers, timeout=10)
    assert r.status_code == 400, r.text
    assert s.coord.status()["candidate_version_id"] == cand          # not rejected by one report
    assert _report(canaries[0], t, 40, 40).status_code == 200       # the honest report still counts


def test_reports_only_for_issued_tasks_within_their_bounds(world):
    """Failed on the old code: any canary-cohort device could report unasked, with count=1e9."""
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    fake_task = wire.Task(kind=wire.TASK_EVALUATE, retry_after=1, candidate_version_id=cand,
                          evaluate_version_ids=(cand, "v0000"))
    r = _report(canaries[0], fake_task, 100, 0)                     # never checked in: no task issued
    assert r.status_code == 403, r.text
    t = canaries[0].checkin()
    assert t.kind == wire.TASK_EVALUATE and t.max_eval_words == s.config.max_eval_words
    assert _report(canaries[0], t, 100, 0, count=1e9).status_code == 400        # more tokens than the task
    assert _report(canaries[0], t, 0, 0, words=s.config.max_eval_words + 1).status_code == 400
    # metrics of a version the task did not ask for were stored with the report, ids unchecked
    extra = canaries[0].evaluate(cand, [_metrics(cand, 50), _metrics("v0000", 50), _metrics("v\u202eevil", 50)])
    assert extra.status_code == 400 and "only, once each" in extra.text
    assert s.admin("GET", "/v1/admin/canary").json()["numbers"]["reports"] == 0
    assert canaries[0].checkin().kind == wire.TASK_EVALUATE                      # still open: re-issued


def test_admin_pin_promote_rollback(world):
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    assert s.admin("POST", "/v1/admin/versions/v0000/pin").json()["status"] == "stable"
    # Pinned: the pending candidate was cancelled; a new one is not auto-promoted even by a good canary.
    cand2 = _candidate_from_round(s, devices, 0.01)
    assert s.coord.status()["candidate_version_id"] == cand2 and cand2 != cand
    for d in canaries[:2]:
        t = d.checkin()
        _report(d, t, 50, 40)
    assert s.coord.status()["stable_version_id"] == "v0000"
    assert s.admin("POST", f"/v1/admin/versions/{cand2}/promote").json()["status"] == "stable"
    assert s.admin("POST", "/v1/admin/versions/v0000/rollback").json()["status"] == "stable"
    rolled = next(v for v in s.coord.list_versions() if v["version_id"] == cand2)   # its history says why it left
    assert rolled["status"] == "retired" and rolled["decisions"][-1]["reason"] == "rolled back: v0000 became stable"
    # A rejected candidate (here: cancelled by the pin) was never stable: no rollback to it.
    r = s.admin("POST", f"/v1/admin/versions/{cand}/rollback")
    assert r.status_code == 409 and "never stable" in r.json()["message"], r.text
    assert s.coord.status()["stable_version_id"] == "v0000"
    assert s.admin("POST", "/v1/admin/versions/v0000/unpin").status_code == 200
    assert s.coord.status()["pinned"] is False
    # Again: already so, and the history does not say it twice.
    def actions() -> list[str]:
        v0 = next(v for v in s.coord.list_versions() if v["version_id"] == "v0000")
        return [d["action"] for d in v0["decisions"]]

    before = actions()
    assert s.admin("POST", "/v1/admin/versions/v0000/unpin").status_code == 200      # a second unpin
    assert actions() == before
    assert s.admin("POST", "/v1/admin/versions/v0000/pin").json()["status"] == "stable"
    assert s.admin("POST", "/v1/admin/versions/v0000/pin").json()["status"] == "stable"   # a second pin
    assert actions() == [*before, "pin"]
    assert s.coord.status()["pinned"] is True


def test_unpin_decides_the_candidate_the_pin_held_back_and_cancellations_are_recorded(world):
    """After pin, a candidate whose canary was good stayed pending after unpin, forever: only a new
    report decided, none came, and no round opens while a candidate is pending. And the candidate a
    pin (or rollback) cancelled showed no decision in its history; unpin was recorded on any id."""
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    assert s.admin("POST", "/v1/admin/versions/v0000/pin").status_code == 200
    hist = next(v for v in s.coord.list_versions() if v["version_id"] == cand)["decisions"]
    assert [(d["action"], d["actor"], d["reason"]) for d in hist] == [
        ("reject", "admin", "cancelled by the pin of v0000 before the canary decided")]
    cand2 = _candidate_from_round(s, devices, 0.01)
    for d in canaries[:2]:
        assert _report(d, d.checkin(), 50, 40).status_code == 200
    assert s.coord.status()["candidate_version_id"] == cand2           # held back by the pin
    r = s.admin("POST", f"/v1/admin/versions/{cand2}/unpin")
    assert r.status_code == 409 and "unpin the stable version v0000" in r.json()["message"], r.text
    assert s.admin("POST", "/v1/admin/versions/v0000/unpin").status_code == 200
    from coordinator.service import Coordinator
    admin = Coordinator(s.coord.config)    # an admin command's process: its settings may not be the service's
    try:
        assert admin.status()["candidate_version_id"] == cand2                 # so it leaves the decision
    finally:
        admin.close()
    status = s.coord.status()              # the service's next request (its maintenance) decides
    assert status["stable_version_id"] == cand2 and status["candidate_version_id"] is None
    assert [d["actor"] for d in next(v for v in s.coord.list_versions() if v["version_id"] == cand2)["decisions"]
            ] == ["auto"]


def test_a_round_closing_under_a_pin_does_not_replace_the_candidate_the_canary_favours(world):
    """README: while pinned, a candidate the canary favours waits for unpin. A round that closed
    meanwhile superseded it ("superseded by ... before the canary decided") and put its own,
    unjudged version in its place. Now the round's version is set aside, recorded."""
    s, devices, canaries, _ = world
    assert s.admin("POST", "/v1/admin/versions/v0000/pin").status_code == 200
    favoured = _candidate_from_round(s, devices, 0.01)
    for d in canaries[:2]:
        assert _report(d, d.checkin(), 50, 40).status_code == 200
    assert s.admin("GET", "/v1/admin/canary").json()["would"] == "promote"
    later = _candidate_from_round(s, devices, 0.01)
    versions = {v["version_id"]: v for v in s.coord.list_versions()}
    assert s.coord.status()["candidate_version_id"] == favoured
    assert versions[favoured]["status"] == "candidate" and versions[later]["status"] == "rejected"
    assert f"candidate {favoured} waits for unpin" in versions[later]["decisions"][-1]["reason"]
    assert s.admin("POST", "/v1/admin/versions/v0000/unpin").status_code == 200
    assert s.coord.status()["stable_version_id"] == favoured     # decided on the reports already in


def test_a_superseded_candidate_keeps_what_the_canary_had_measured(world, tmp_path):
    """Superseded before the canary decided, a candidate's decision held no numbers: the dashboard
    showed no top-3 for a candidate that devices had scored."""
    import json

    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    assert _report(canaries[0], canaries[0].checkin(), 50, 40).status_code == 200   # 1 of 2 reports
    make_version(tmp_path / "next", "v-next", seed=5)
    doc = json.loads((tmp_path / "next" / "manifest.json").read_text())
    (tmp_path / "next" / "manifest.json").write_text(json.dumps(doc | {"parent": "v0000"}))
    s.coord.import_version(str(tmp_path / "next"))
    gone = next(v for v in s.coord.list_versions() if v["version_id"] == cand)["decisions"][-1]
    assert gone["reason"] == "superseded by v-next before the canary decided"
    # not the canary's veto: an alert on the canary's rejections fired on routine replacements
    assert gone["actor"] == "newer version"
    assert 'fedkeys_canary_decisions_total{action="reject"} 0.0' in requests.get(s.url + wire.PATH_METRICS,
                                                                               timeout=5).text
    assert gone["numbers"]["candidate"]["word_top3_acc"] == pytest.approx(0.5)
    shown = next(v for v in s.admin("GET", "/v1/admin/dashboard").json()["versions"] if v["version_id"] == cand)
    assert shown["candidate_top3_pct"] == pytest.approx(50.0)


def test_epsilon_against_the_coordinator_counts_every_round_it_received_updates_in(world):
    """The stable version's epsilon_local was the number to quote, but it counts only its own
    lineage's rounds: after a pin (or rollback, or a rejected candidate) the coordinator had seen
    the devices' updates of rounds no version in use counts, and the quoted number went down."""
    s, devices, _, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    assert s.admin("POST", "/v1/admin/versions/v0000/pin").status_code == 200     # cand rejected
    cand2 = _candidate_from_round(s, devices, 0.01)
    versions = {v["version_id"]: v for v in s.coord.list_versions()}
    assert versions[cand]["status"] == "rejected" and versions[cand2]["privacy"]["rounds"] == 1
    seen = s.coord.status()["privacy"]
    assert seen["rounds"] == 2 and seen["epsilon_local"] > versions[cand2]["privacy"]["epsilon_local"] > 0
    dash = s.admin("GET", "/v1/admin/dashboard").json()["privacy"]
    assert dash["epsilon_local"] == seen["epsilon_local"] and dash["rounds"] == 2
    metrics = s.admin("GET", "/metrics").text
    assert f"fedkeys_epsilon_against_coordinator {seen['epsilon_local']}" in metrics, metrics


def test_an_imported_child_of_stable_keeps_its_privacy_history_and_import_as_stable_is_a_stable_change(
        world, tmp_path):
    """A version exported from stable and imported back (a word-list change) was signed with
    epsilon 0 and no rounds, and every later candidate composed from that. And `import-version
    --stable` retired the stable version without failing the round open on it or cancelling the
    pending candidate, which the canary then compared with the new stable."""
    import json

    s, devices, _, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    assert s.admin("POST", f"/v1/admin/versions/{cand}/promote").json()["status"] == "stable"

    def child(name: str) -> str:
        d = s.coord.export_version(cand, tmp_path / name)
        doc = json.loads((d / "manifest.json").read_text())
        doc.update(version_id=f"{cand}-{name}", parent=cand)
        (d / "manifest.json").write_text(json.dumps(doc))
        return str(d)

    first = s.coord.import_version(child("w1"), any_parent=False)
    versions = {v["version_id"]: v for v in s.coord.list_versions()}
    assert versions[first]["status"] == "candidate"
    assert versions[first]["privacy"]["history"] == versions[cand]["privacy"]["history"]
    assert versions[first]["privacy"]["rounds"] == 1 and versions[first]["epsilon"] == versions[cand]["epsilon"] > 0
    rid = s.coord.start_round(goal_count=2, min_count=2)   # (while a candidate is pending, as an operator may)
    second = s.coord.import_version(child("w2"), as_candidate=False, any_parent=False)
    versions = {v["version_id"]: v for v in s.coord.list_versions()}
    assert versions[second]["status"] == "stable" and versions[cand]["status"] == "retired"
    assert versions[first]["status"] == "rejected"
    assert versions[first]["decisions"][-1]["reason"] == (f"cancelled by the import of {second} as stable before "
                                                          "the canary decided")
    assert s.coord.get_round(rid)["status"] == "failed"
    # A parent with a round without noise (epsilon inf): the child's record stays JSON a browser
    # reads ("inf" as write_candidate writes it), not a bare Infinity that broke the dashboard.
    rid = s.coord.start_round(goal_count=2, min_count=2, noise_multiplier=0.0)
    for i, d in enumerate(devices[:2]):
        t = d.checkin()
        assert d.upload(random_delta(i, 0.01), round_id=rid, base=t.base_version_id, examples=10).status_code == 200
    cand = s.coord.get_round(rid)["result_version_id"]
    assert s.admin("POST", f"/v1/admin/versions/{cand}/promote").json()["status"] == "stable"
    third = s.coord.import_version(child("w3"), any_parent=False)
    text = s.admin("GET", "/v1/admin/versions").text
    assert "Infinity" not in text and third in text


def test_an_operators_promote_records_what_the_canary_showed(world):
    """An operator's promote over one canary report recorded no numbers: the dashboard lost the
    candidate's canary top-3 the moment it became stable, and the decision log said only
    'admin promote'."""
    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    t = canaries[0].checkin()
    assert _report(canaries[0], t, cand_top3=50, stable_top3=36).status_code == 200
    assert s.admin("POST", f"/v1/admin/versions/{cand}/promote").json()["status"] == "stable"
    decision = next(v for v in s.coord.list_versions() if v["version_id"] == cand)["decisions"][-1]
    assert (decision["action"], decision["actor"]) == ("promote", "admin")
    assert decision["reason"].startswith("admin promote (the canary: wait, 1 of 2 canary devices scored words")
    assert decision["numbers"]["candidate"]["word_top3_acc"] == pytest.approx(0.5)
    page = s.admin("GET", "/v1/admin/dashboard").json()
    shown = next(v for v in page["versions"] if v["version_id"] == cand)
    assert (shown["candidate_top3_pct"], shown["stable_top3_pct"]) == (pytest.approx(50.0), pytest.approx(36.0))


@pytest.mark.parametrize("exported_by", ["this release", "a release before counted histories"])
def test_epsilon_against_the_coordinator_counts_the_rounds_an_import_brings(world, tmp_path, exported_by):
    """A trained lineage exported and imported into a new data directory (the operator's service
    moved): its rounds were received by the same operator, but the number to quote read epsilon 0
    with 0 rounds beside a stable version of epsilon 10,000. Imported in order, each
    version's parent was held, and its record was the parent's: the rounds were lost from the
    versions' own epsilon too. In any order the rounds count; two imports whose link is not held
    may count shared rounds twice (over, never under). Exports made before histories were
    counted hold one [q, sigma] a round, and count the same."""
    import json

    s, devices, _, _ = world
    first = _candidate_from_round(s, devices, 0.01)
    s.admin("POST", f"/v1/admin/versions/{first}/promote")
    second = _candidate_from_round(s, devices, 0.01)
    s.admin("POST", f"/v1/admin/versions/{second}/promote")
    theirs = s.coord.status()["privacy"]
    dirs = {vid: s.coord.export_version(vid, tmp_path / vid) for vid in ("v0000", first, second)}
    assert json.loads((dirs[second] / "manifest.json").read_text())["privacy"]["history"] == [[1.0, 0.01, 2]]
    if exported_by != "this release":
        for d in dirs.values():
            doc = json.loads((d / "manifest.json").read_text())
            if "history" in doc["privacy"]:
                doc["privacy"]["history"] = [[q, z] for q, z, n in doc["privacy"]["history"] for _ in range(n)]
                (d / "manifest.json").write_text(json.dumps(doc))
    with serve(make_config(tmp_path / "in-order")) as moved:
        for vid in ("v0000", first, second):
            moved.coord.import_version(str(dirs[vid]))
        mine = {v["version_id"]: v["privacy"]["rounds"] for v in moved.coord.list_versions()}
        assert mine == {"v0000": 0, first: 1, second: 2}
        seen = moved.coord.status()["privacy"]
        assert seen["rounds"] == 2 and seen["epsilon_local"] == pytest.approx(theirs["epsilon_local"])
    with serve(make_config(tmp_path / "newest-first")) as moved:
        moved.coord.import_version(str(dirs[second]))
        assert moved.coord.status()["privacy"]["rounds"] == 2
        # the new deployment's own versions number on from the imported one's id (it made its
        # own v0002 after importing v0002-..., and listed two of them)
        assert [v["seq"] for v in moved.coord.list_versions()] == [int(second[1:5])]
        moved.coord.import_version(str(dirs[first]))   # now the newest's parent is held: still 2, not 1
        assert moved.coord.status()["privacy"]["rounds"] == 2


def test_a_round_made_version_gets_its_download_form_back_from_an_export(world, tmp_path):
    """Its int8 download form is built on its parent's row scales: restoring it from an export
    (`import-version` of the version's own files) rebuilds it the way the round made it."""
    import json

    from protocol.artifact import sha256_bytes

    s, devices, _, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    d = s.coord.export_version(cand, tmp_path / "export")
    q8 = json.loads((d / "manifest.json").read_text())["weights_q8_sha256"]
    s.coord.blobs.path(q8).unlink()
    assert s.coord.import_version(str(d)) == cand
    assert sha256_bytes(s.coord.blobs.get(q8)) == q8


def test_an_imported_version_whose_parent_is_not_held_here_keeps_its_privacy_history(world, tmp_path):
    """A version trained elsewhere (exported from another coordinator, its parent not held here)
    was imported with an empty privacy record: epsilon 0 in the database, the dashboard and the
    manifest devices download, as if it had never seen users' text."""
    import json

    from coordinator.errors import ApiError

    s, devices, _, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    d = s.coord.export_version(cand, tmp_path / "foreign")
    doc = json.loads((d / "manifest.json").read_text())
    doc.update(version_id="foreign-1", parent="held-elsewhere")
    # what a secure round writes beside the numbers: kept (summarize's defaults said "no secure
    # aggregation" over it, in the same signed record as the note)
    doc["privacy"] |= {"assumptions": "a secure round's own words", "secure_aggregation": {"rounds": [1]}}
    (d / "manifest.json").write_text(json.dumps(doc))
    vid = s.coord.import_version(str(d))
    versions = {v["version_id"]: v for v in s.coord.list_versions()}
    mine, theirs = versions[vid], versions[cand]
    assert mine["privacy"]["rounds"] == 1 and mine["privacy"]["history"] == theirs["privacy"]["history"]
    assert mine["privacy"]["assumptions"] == "a secure round's own words"
    assert mine["privacy"]["secure_aggregation"] == {"rounds": [1]}
    assert mine["epsilon"] == pytest.approx(theirs["epsilon"]) and mine["epsilon"] > 0
    signed = json.loads((s.coord.export_version(vid, tmp_path / "again") / "manifest.json").read_text())
    assert signed["privacy"]["epsilon"] == pytest.approx(theirs["epsilon"])   # what devices download
    doc.update(version_id="foreign-2")
    doc["privacy"]["rounds"] = 5   # a record that contradicts itself is refused, nothing stored
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ApiError, match="5 rounds but holds a history of 1"):
        s.coord.import_version(str(d))
    assert "foreign-2" not in {v["version_id"] for v in s.coord.list_versions()}
    doc["privacy"] |= {"rounds": 10**18, "history": [[1.0, 0.01, 10**18]]}   # counted: a count is bounded
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ApiError, match="not readable .it counts more than 1,000,000,000 rounds"):
        s.coord.import_version(str(d))
    # a parent that is no version id (markup, terminal escapes) reached tables and logs as it was
    doc.update(version_id="foreign-3", parent='<script>x</script>\x1b[31mRED')
    doc["privacy"]["rounds"] = 1
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ApiError, match="is not a version id"):
        s.coord.import_version(str(d))


@pytest.mark.parametrize("sybils", [0, 1, 2])
def test_sybil_canaries_up_to_20_percent_cannot_promote_what_honest_canaries_reject(tmp_path, sybils):
    """Failed on the old code: one sybil claiming a huge count carried the pooled vote."""
    with serve(make_config(tmp_path, canary_fraction=1.0, canary_min_reports=10, canary_tolerance=0.005)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(10)]
        cand = _candidate_from_round(s, devices, 0.01)
        liars, honest = devices[:sybils], devices[sybils:]
        words = s.config.max_eval_words
        for d in liars + honest:
            t = d.checkin()
            assert t.kind == wire.TASK_EVALUATE
            if d in liars:   # the most a report may claim: every word a hit for the candidate, none for stable
                r = _report(d, t, cand_top3=words, stable_top3=0, words=words, count=s.config.max_eval_examples * 8)
            else:            # honest canaries measure the candidate 3 points worse
                r = _report(d, t, cand_top3=37, stable_top3=40)
            assert r.status_code == 200, r.text
        status = {v["version_id"]: v["status"] for v in s.coord.list_versions()}
        assert status[cand] == "rejected" and status["v0000"] == "stable"


def test_a_stable_change_fails_the_round_open_on_the_old_one(world):
    """A round opened on v0 stayed open after an operator promoted the candidate; its aggregate
    would have become a candidate built on the retired v0, without what the promoted one holds."""
    s, devices, _, others = world
    cand = _candidate_from_round(s, devices, 0.01)
    rid = s.coord.start_round(goal_count=2, min_count=1)            # opened while the canary decides
    t = others[0].checkin()                                          # (a canary device would evaluate)
    assert t.kind == wire.TASK_TRAIN and t.base_version_id == "v0000"
    assert s.admin("POST", f"/v1/admin/versions/{cand}/promote").json()["status"] == "stable"
    rnd = s.coord.get_round(rid)
    assert rnd["status"] == "failed" and rnd["result_version_id"] is None
    assert rnd["reason"] == f"the stable version changed to {cand} while it trained v0000"
    late = others[0].upload(random_delta(0, 0.01), round_id=rid, base="v0000", examples=10)
    assert late.status_code == 409 and late.json()["error"] == wire.E_LATE
    assert 'fedkeys_rounds_total{event="failed"} 1.0' in s.admin("GET", "/metrics").text
    rid2 = s.coord.start_round(goal_count=2, min_count=1)           # the next one trains the new stable
    assert s.coord.get_round(rid2)["status"] == "open"
    assert devices[1].checkin().base_version_id == cand
    # A change to the version the open round trains leaves it open.
    assert s.admin("POST", f"/v1/admin/versions/{cand}/pin").status_code == 200
    assert s.coord.get_round(rid2)["status"] == "open"


def test_a_restart_with_fewer_reports_needed_decides_the_pending_candidate(tmp_path, caplog):
    """Restarted with a lower canary_min_reports after its canaries had reported, the service
    left the candidate pending for good: decisions came only with a new report or an unpin.
    Before it, a cohort of 3 under canary_min_reports 5 can never decide, and no round opens
    meanwhile: the comparison, the log and a gauge say so (it read as progress, "2 of 5")."""
    import logging

    cfg = make_config(tmp_path, canary_fraction=1.0, canary_min_reports=5, canary_tolerance=0.01)
    with serve(cfg) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(3)]
        cand = _candidate_from_round(s, devices, 0.01)
        with caplog.at_level(logging.WARNING, logger="coordinator.canary"):
            for d in devices[:2]:
                assert _report(d, d.checkin(), 41, 40).status_code == 200
        assert s.coord.status()["candidate_version_id"] == cand                 # 2 of 5 reports: waits
        said = s.coord.canary_comparison()
        assert said["never_decides"] and "cohort has 3 enrolled devices" in said["reason"], said
        stuck = [r for r in caplog.records if r.getMessage().startswith(f"candidate {cand}: can never decide")]
        assert len(stuck) == 1 and stuck[0].levelno == logging.WARNING      # once, however many reports
        metrics = requests.get(s.url + wire.PATH_METRICS, timeout=5).text
        assert "fedkeys_canary_can_decide 0.0" in metrics and "fedkeys_canary_reports 2.0" in metrics
    with serve(cfg.with_overrides({"canary_min_reports": 2})) as s:
        status = s.coord.status()                                              # its first request decides
        assert status["stable_version_id"] == cand and status["candidate_version_id"] is None


def test_a_version_whose_files_are_gone_is_not_made_stable(world, tmp_path):
    """A rollback to a retired version whose files the data directory no longer held succeeded,
    and then every device's download of its weights was a 500."""
    s, _, _, _ = world
    make_version(tmp_path / "v1", "v0001", seed=1)
    s.coord.import_version(tmp_path / "v1", as_candidate=False)      # v0000 retired
    v0 = next(v for v in s.coord.list_versions() if v["version_id"] == "v0000")
    with s.coord._sessions() as sess:
        from coordinator.models import Version
        s.coord.blobs.path(sess.get(Version, "v0000").weights_sha256).unlink()
    assert v0["status"] == "retired"
    for action in ("rollback", "pin"):
        r = s.admin("POST", f"/v1/admin/versions/v0000/{action}")
        assert r.status_code == 409 and "lacks v0000's files" in r.json()["message"], r.text
    assert s.coord.status()["stable_version_id"] == "v0001"


def test_a_report_from_a_device_a_smaller_cohort_left_out_says_so(world):
    """Restarted with a smaller canary_fraction, the service answered a task it had issued with
    "no evaluation task ... was issued to this device"."""
    from coordinator.errors import ApiError
    from coordinator.service import Coordinator

    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    task = canaries[0].checkin()
    assert task.kind == wire.TASK_EVALUATE
    smaller = Coordinator(s.coord.config.with_overrides({"canary_fraction": 1e-6}))
    try:
        report = wire.EvaluationReport(candidate_version_id=cand, results=(
            _metrics(task.evaluate_version_ids[0], 41), _metrics(task.evaluate_version_ids[1], 40)))
        with pytest.raises(ApiError, match="no longer in the canary cohort"):
            smaller.report_evaluation(canaries[0].device_id, report)
    finally:
        smaller.close()


def test_a_stored_report_this_release_refuses_is_left_out_not_a_500(world, caplog):
    """An older release stored reports with a token count between 0 and 1, which the wire now
    refuses: read back, one raised in every verdict (every report after it, the dashboard, the
    service's start)."""
    import json

    from sqlalchemy import select, update

    from coordinator import queries
    from coordinator.models import Evaluation

    s, devices, canaries, _ = world
    cand = _candidate_from_round(s, devices, 0.01)
    task = canaries[0].checkin()
    assert _report(canaries[0], task, 50, 50).status_code == 200
    with s.coord.tx() as db:   # as the older release stored it
        rep = json.loads(db.scalar(select(Evaluation.report_json).where(
            Evaluation.candidate_version_id == cand, Evaluation.report_json != queries.EVALUATION_ISSUED)))
        rep["results"][0]["count"] = 1e-296
        db.execute(update(Evaluation).where(Evaluation.candidate_version_id == cand)
                   .values(report_json=json.dumps(rep)))
    with caplog.at_level("WARNING", logger="coordinator.canary"):
        canary = s.admin("GET", "/v1/admin/canary")
    assert canary.status_code == 200 and canary.json()["numbers"]["reports"] == 0
    assert "is left out" in caplog.text



def test_evaluate_tasks_go_out_a_few_at_a_time_not_to_the_whole_cohort(tmp_path):
    """Failed on the old code: every canary that checked in was handed a task (~250
    devices evaluated for a decision taken on 5 reports)."""
    from coordinator import canary
    from coordinator.models import utcnow

    with serve(make_config(tmp_path, canary_fraction=1.0, canary_min_reports=2)) as s:
        make_version(tmp_path / "v0")
        s.coord.import_version(tmp_path / "v0")
        key = s.coord.create_enrollment_key()
        devices = [FakeDevice(s.url, key) for _ in range(7)]
        cand = _candidate_from_round(s, devices, 0.01)
        cap = canary.TASKS_PER_REPORT * 2
        tasks = [d.checkin() for d in devices]
        asked = [d for d, t in zip(devices, tasks) if t.kind == wire.TASK_EVALUATE]
        assert len(asked) == cap and all(t.use_version_id == cand for t in tasks)
        late = next(d for d, t in zip(devices, tasks) if t.kind != wire.TASK_EVALUATE)
        assert asked[0].checkin().kind == wire.TASK_EVALUATE   # its own task again, after a lost reply
        # A report that scored no words frees a place; the decision still waits for 2 that did.
        t0 = asked[0].checkin()
        assert _report(asked[0], t0, 0, 0, words=0).status_code == 200
        assert late.checkin().kind == wire.TASK_EVALUATE
        others = [d for d in devices if d not in asked and d is not late]
        assert all(d.checkin().kind != wire.TASK_EVALUATE for d in others)
        # A task never reported stops holding its place after the lease.
        long_ago = utcnow() - canary.TASK_LEASE - timedelta(seconds=5)
        with s.coord.engine.begin() as c:
            c.execute(text("UPDATE evaluations SET created_at = :t WHERE report_json = ''"), {"t": long_ago})
        assert others[0].checkin().kind == wire.TASK_EVALUATE
        # A lapsed task comes back to its device (it may hold a report) and holds a place again.
        assert all(d.checkin().kind == wire.TASK_EVALUATE for d in [*asked[1:], late])
        assert others[1].checkin().kind != wire.TASK_EVALUATE   # 5 places held: none for a new one
        for d in asked[1:3]:
            assert _report(d, d.checkin(), 41, 40).status_code == 200
        assert {v["version_id"]: v["status"] for v in s.coord.list_versions()}[cand] == "stable"
