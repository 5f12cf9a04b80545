"""The simulation's four renderers: the per-round line on the console, report.md, report.png and
report.json.

report.json is read by automation: keep `references.{ngram,ngram_proxy,proxy,central}` with the
meanings issue 10 gave them (the central trigram, the proxy trigram, version 0's LSTM alone, the
central LSTM: `proxy` and `ngram_proxy` are what ships without users' text), `proxy_lstm` (the same as
`proxy`), `keyboard_v0` (the keyboard on version 0), `ngram_shared`, `federations[].final_metrics`,
`federations[].global_metrics` and the round fields as they are (add keys, never rename:
`federations[].final_version_dir` is the final version's directory). Reports written before
7 December 2026 hold the keyboard on version 0 under `proxy`, which a reader of the issue's fields
takes for the proxy-only LSTM."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tools._cli import count
from tools.simulate.disk import size
from tools.simulate.population import Population, proxy_files
from tools.wordeval import paired_interval, scored_words

if TYPE_CHECKING:
    from tools.simulate.federation import FederationResult, RoundResult


def _fmt_eps(x: float | str) -> str:
    """ε as the reports print it: ∞ when unbounded (no noise: a string or a non-finite float)."""
    if isinstance(x, str) or not math.isfinite(x):
        return "∞"
    return f"{x:.3g}"


def _pct(m: dict | None, key: str) -> str:
    return "–" if not m else f"{m[key]:.1%}"


def _reasons(r: RoundResult) -> str:
    """Why a round's updates were rejected, as both renderers print it after the count: " (norm 1)"."""
    reasons = ", ".join(f"{k} {v}" for k, v in r.rejection_reasons.items())
    return f" ({reasons})" if reasons else ""


def round_line(r: RoundResult, title: str) -> str:
    """The console's account of one round, printed as it ends: a sentence rather than a table, so
    a narrow terminal wraps it instead of cutting figures short (report.md has the table)."""
    canary = r.verdict + (f" on {r.canary_reports} canary reports" if r.canary_reports else "")
    skipped = f", {r.skipped} skipped (nothing cached to train on)" if r.skipped else ""
    return (f"{title}: {r.eligible} eligible, {r.trained} uploaded, {r.dropped} dropped{skipped}, "
            f"{r.accepted} accepted, {r.rejected} rejected{_reasons(r)}; canary: {canary}; "
            f"candidate top-3 {_pct(r.candidate_metrics, 'top3')}; deployed top-3 {_pct(r.stable_metrics, 'top3')}, "
            f"KSR {_pct(r.stable_metrics, 'ksr')}; ε {_fmt_eps(r.epsilon)} "
            f"(against the coordinator {_fmt_eps(r.epsilon_local)})")


def headline_rows(refs: dict[str, dict], feds: list[FederationResult], rounds: int) -> list[tuple[str, dict]]:
    """(label, metrics) of the report's headline table, the references first, the federations after."""
    shared = [("the same trigram, only the words and n-grams at least 2 train users typed (the most a release "
               "protecting each user could hold)", refs["ngram_shared"])] if "ngram_shared" in refs else []
    rows = [("Kneser-Ney trigram, central on the train users' text (collects text)", refs["ngram"]), *shared,
            ("Kneser-Ney trigram, proxy text only", refs["ngram_proxy"]),
            ("LSTM, proxy text only (version 0)", refs["proxy_lstm"]),
            ("FedKeys keyboard on version 0 (proxy LSTM + base n-gram + what it learns on the device)",
             refs["keyboard_v0"])]
    for f in feds:
        dp = "" if f.noise_multiplier == 0 else (f" with DP noise (σ={f.noise_multiplier:g}, "
                                                 f"ε={_fmt_eps(f.rounds[-1].epsilon)}, ε against the coordinator "
                                                 f"{_fmt_eps(f.rounds[-1].epsilon_local)})")
        rows.append((f"LSTM, federated{dp}, {rounds} rounds (global model alone)", f.global_metrics))
        rows.append((f"**FedKeys keyboard, federated{dp}, {rounds} rounds** "
                     "(global LSTM + base n-gram + what it learns on the device)",
                     f.final_metrics))
    if "central" in refs:
        rows.append((f"LSTM, central on all train users (upper bound, collects text{central_cap(refs)})",
                     refs["central"]))
    return rows


def central_cap(refs: dict[str, dict]) -> str:
    """Says so in the central row when its epochs were capped (`--central-steps-per-epoch`): the
    reference then saw a random share of the train windows each epoch, not every one."""
    seen = refs.get("central", {}).get("training", {})
    if not seen or seen["windows_per_epoch"] >= seen["windows"]:
        return ""
    return (f"; each epoch a random {seen['windows_per_epoch']:,} of its {seen['windows']:,} windows, "
            "--central-steps-per-epoch")


def verdict_lines(refs: dict[str, dict], fed: FederationResult) -> list[str]:
    """The claims the report makes, each a difference in points on the same held-out words."""
    kb, glob = fed.final_metrics, fed.global_metrics

    def pts(a: dict, b: dict, key: str) -> str:
        """The difference in points, with its 95% bootstrap interval over held-out users when both
        sides carry per-user counts on the same words (tools.wordeval.paired_interval)."""
        text = f"{(a[key] - b[key]) * 100:+.1f}"
        try:
            lo, hi = paired_interval(a["per_user"], b["per_user"], key)
        except (KeyError, ValueError):
            return text
        if lo is None:
            return f"{text} (one held-out user: no interval)"
        return f"{text} (95% interval {lo:+.1f} to {hi:+.1f})"

    shippable = max((refs["ngram_proxy"], refs["proxy_lstm"]), key=lambda m: m["top3"])
    shared = refs.get("ngram_shared")
    lines = [f"FedKeys keyboard vs the central trigram: top-3 {pts(kb, refs['ngram'], 'top3')} points, "
             f"KSR {pts(kb, refs['ngram'], 'ksr')} points"
             + (f"; vs its part that at least 2 train users typed: top-3 {pts(kb, shared, 'top3')} points, "
                f"KSR {pts(kb, shared, 'ksr')} points." if shared else "."),
             f"FedKeys keyboard vs the best model shippable without users' text (proxy-only LSTM or trigram): "
             f"top-3 {pts(kb, shippable, 'top3')} points, KSR {pts(kb, shippable, 'ksr')} points.",
             f"Federated global LSTM vs proxy only: top-3 {pts(glob, refs['proxy_lstm'], 'top3')} points."]
    if "central" in refs:
        lines.append(f"Federated global LSTM vs the central LSTM: top-3 {pts(glob, refs['central'], 'top3')} points, "
                     f"KSR {pts(glob, refs['central'], 'ksr')} points.")
    return lines


def final_dir_note(fed: FederationResult) -> str:
    """Where the final version's directory is, and what it is good for (report.md and the console)."""
    return (f"in `{fed.final_dir}` (a version directory: `python -m tools.evaluate --model DIR`; the next run "
            "into this --data-dir replaces it, so copy it to keep it)")


def write_plot(path: Path, refs: dict[str, dict], feds: list[FederationResult], v0_metrics: dict,
               who: str = "held-out") -> None:
    """report.png: top-3 and keystroke savings of the deployed version by round, references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"ngram": ("central trigram (collects text)", "tab:gray", ":"),
              "keyboard_v0": ("keyboard on version 0 (proxy only)", "tab:red", "--"),
              "central": ("central LSTM (upper bound)", "tab:green", "--")}
    for ax, key, title in ((axes[0], "top3", "next-word top-3 accuracy"), (axes[1], "ksr", "keystroke savings")):
        for name, (label, color, ls) in styles.items():
            if name in refs:
                ax.axhline(refs[name][key], color=color, ls=ls, lw=1.2, label=label)
        for f, color in zip(feds, ("tab:blue", "tab:purple"), strict=False):
            xs = [0] + [r.round for r in f.rounds]
            ys = [v0_metrics[key]] + [r.stable_metrics.get(key, math.nan) for r in f.rounds]
            label = ("keyboard, federated" if f.noise_multiplier == 0
                     else f"keyboard, federated, DP σ={f.noise_multiplier:g}")
            ax.plot(xs, ys, marker="o", color=color, label=label)
            for r in f.rounds:
                if r.candidate_metrics and r.verdict != "promote":
                    ax.plot([r.round], [r.candidate_metrics[key]], marker="x", color=color, ls="none", ms=8)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"FedKeys simulation: {who} users (x: candidate the canary did not promote)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(data: Path, args: argparse.Namespace, command: str, pop: Population, refs: dict[str, dict],
                 feds: list[FederationResult], v0_metrics: dict, seconds: float) -> Path:
    """report.md, report.png and report.json under `data`; the path of report.md."""
    rows = headline_rows(refs, feds, args.rounds)
    words = refs["keyboard_v0"]["words"]
    available = scored_words(pop.heldout)
    reached = sum(1 for counts in refs["keyboard_v0"]["per_user"] if counts[0])
    proxy_names = " + ".join(f"`{Path(p).name}`" for p in proxy_files(args))
    lines = [
        "# FedKeys simulation report", "",
        f"Command: `{command}`", "",
        f"Device corpus `{Path(args.corpus).name}`: {len(pop.users)} simulated devices (the {len(pop.users)} train "
        f"users with the most text of those with 2+ texts, of {pop.train_users}), evaluated on {words:,} words of "
        f"{reached} of the {pop.test_users} {pop.who} users "
        f"({'every word' if words == sum(available.values()) else 'an even share each'}"
        f"; the scored halves of all {pop.test_users} hold {sum(available.values()):,} words); proxy corpus "
        f"{proxy_names}. "
        f"{args.rounds} rounds, participation "
        f"{args.participation:.0%}, dropout {args.dropout:.0%}; plan: {args.epochs} epoch(s), batch "
        f"{args.batch_size}, lr {args.learning_rate}, clip {args.clip_norm}, ≤{args.max_examples} windows per "
        f"device; server {args.server_optimizer} (lr {args.server_lr}"
        f"{f', momentum {args.server_momentum}' if args.server_optimizer == 'fedavgm' else ''}). "
        f"Total {seconds / 60:.1f} min.", "",
        *([f"Scored on the corpus's validation users (`--split {pop.scored}`), to tune a recipe on: issue "
           "claims are made on the test users, the default. The central reference kept the epoch of its "
           "lowest loss on these same users (`tools.pretrain` stops early on them), so it reads somewhat "
           "high here: a gap to it is wider than on the test users.", ""] if pop.scored != "test" else []),
        "| model | top-1 | top-3 | KSR |", "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {m['top1']:.1%} | {m['top3']:.1%} | {m['ksr']:.1%} |" for label, m in rows]
    lines += ["", *verdict_lines(refs, feds[0])]
    lines += ["", "![top-3 and keystroke savings by round](report.png)", ""]
    for f in feds:
        lines += [f"## Rounds: {f.name} (noise multiplier {f.noise_multiplier:g})", "",
                  "| round | eligible | uploaded | dropped | accepted | rejected (reasons) | canary verdict | "
                  "candidate top-3 | deployed top-3 | deployed KSR | ε | ε against the coordinator |",
                  "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in f.rounds:
            lines.append(f"| {r.round} | {r.eligible} | {r.trained} | {r.dropped} | {r.accepted} | {r.rejected}"
                         f"{_reasons(r)} | {r.verdict}"
                         f"{f' ({r.canary_reports} reports)' if r.canary_reports else ''} | "
                         f"{_pct(r.candidate_metrics, 'top3')} | {_pct(r.stable_metrics, 'top3')} | "
                         f"{_pct(r.stable_metrics, 'ksr')} | {_fmt_eps(r.epsilon)} | {_fmt_eps(r.epsilon_local)} |")
        lines += ["", f"Final deployed version: `{f.final_version}`, {final_dir_note(f)}. Canary verdicts: "
                  + "; ".join(f"round {r.round}: {r.verdict_reason}" for r in f.rounds if r.verdict_reason), ""]
        if f.devices_bytes:
            lines += [f"Disk: {size(f.devices_bytes)} for the {count(len(pop.users), 'simulated device')} "
                      f"(`{f.keyboard_dir.parent / 'devices'}`): each keeps the version in use and the previous "
                      "one, as a phone does for rollback; deleting the run's directory gives it back.", ""]
    lines += ["Notes: top-1/top-3 are next-word accuracy of the suggestion strip after each space; KSR is the "
              "share of keystrokes saved by tapping a suggestion as soon as it shows. ε is (ε, δ=1e-6)-DP from the "
              "coordinator's RDP accountant (∞ without noise); against the coordinator itself, which sees each "
              "noisy update, only the larger 'ε against the coordinator' holds (no secure aggregation). "
              "A handful of simulated devices cannot afford much noise: DP-FedAvg needs thousands of devices per "
              "round for a useful ε at this accuracy."]
    (data / "report.md").write_text("\n".join(lines) + "\n")
    write_plot(data / "report.png", refs, feds, v0_metrics, pop.who)
    # heldout_pieces: held-out documents typed in pieces (`typed_in_pieces`); tools.rescore pairs by it
    payload = {"command": command, "settings": {**vars(args), "heldout_pieces": pop.heldout_split},
               "headline": [{"model": label, **m} for label, m in rows],
               "references": {**refs, "proxy": refs["proxy_lstm"]},   # issue 10's `proxy`: the proxy LSTM
               "federations": [{"name": f.name, "noise_multiplier": f.noise_multiplier,
                                "final_version": f.final_version, "final_version_dir": str(f.final_dir),
                                "final_metrics": f.final_metrics,
                                "global_metrics": f.global_metrics, "devices_bytes": f.devices_bytes,
                                "rounds": [asdict(r) for r in f.rounds]} for f in feds]}
    (data / "report.json").write_text(json.dumps(payload, indent=1, default=str))
    return data / "report.md"

