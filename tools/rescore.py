"""Score a finished simulation's claims again on more held-out words, and with every user weighted the same.

    python -m tools.rescore --data-dir DIR [--eval-words N] [--central DIR] [--json]

A simulation scores 1,500 held-out words by default, one text per user in turn; where texts are long
(e-mail) those words reach only some of the held-out users, and every word counts the same, so users
who type a lot weigh a lot. This scores the run's final version and its references again on N words
(default: every held-out word) and prints each of the report's claims three ways: on the run's own
words, on the N words, and on the N words with each user's rate counted once (their mean), each with
its 95% bootstrap interval over users. References are cached in DIR/reference.json as the simulation
caches them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protocol.cli import HelpFormatter, add_version
from tools._cli import DEFAULT_PROXY, run

CLAIMS = (  # (label, federated side, reference, metric)
    ("keyboard vs central trigram, top-3", "keyboard", "ngram", "top3"),
    ("keyboard vs central trigram, KSR", "keyboard", "ngram", "ksr"),
    ("keyboard vs its part 2+ train users typed, top-3", "keyboard", "ngram_shared", "top3"),
    ("keyboard vs best shippable, top-3", "keyboard", "shippable", "top3"),
    ("global LSTM vs central LSTM, top-3", "global", "central", "top3"),
    ("global LSTM vs central LSTM, KSR", "global", "central", "ksr"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.rescore", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--data-dir", required=True, help="a finished tools.simulate or tools.demo run (its --data-dir)")
    p.add_argument("--eval-words", type=int, default=0, help="held-out words to score again (0: every one)")
    p.add_argument("--central", help="the central reference version (default: the run's, if it had one)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _run_parts(data: Path, args: argparse.Namespace) -> tuple[dict, Path, Path, Path | None]:
    """The run's settings, its final version, version 0 and central reference, checked to exist."""
    from tools.shipped import SHIPPED_V0

    try:
        report = json.loads((data / "report.json").read_text())
        settings, fed = report["settings"], report["federations"][0]
    except (OSError, ValueError, KeyError, IndexError):
        raise ValueError(f"{data}: no finished simulation here (report.json missing or unreadable)") from None
    final = data / "runs" / "federated" / "keyboard" / "models" / fed["final_version"]
    v0 = Path(settings["v0"]) if settings.get("v0") else (data / "models" / "v0" if settings.get("pretrain_v0")
                                                         else SHIPPED_V0)
    central = Path(args.central) if args.central else Path(settings["central"]) if settings.get("central") \
        else data / "models" / "central"
    if not (central / "manifest.json").exists():
        if args.central:
            raise ValueError(f"--central {args.central}: no model version there")
        central = None
    for what, d in (("the run's final version", final), ("version 0", v0)):
        if not (d / "manifest.json").exists():
            raise ValueError(f"{d}: {what} is gone (was the run's directory moved or cleaned?)")
    return {**settings, "_fed": fed}, final, v0, central


def rescore(data: Path, args: argparse.Namespace) -> dict:
    """{weighting: {claim: [difference, low, high]}} plus the words and users each weighting covered."""
    from tools.simulate.population import load_population
    from tools.simulate.references import reference_scores, score_version, stderr_to
    from tools.wordeval import paired_interval, scored_words, user_mean_difference

    settings, final, v0, central = _run_parts(data, args)
    corpus, proxy = settings["corpus"], list(settings.get("proxy") or DEFAULT_PROXY)
    pop = load_population(corpus, settings.get("devices"))
    total = sum(scored_words(pop.heldout).values())
    budget = args.eval_words or total
    quiet = data / "runs" / "rescore.log"
    quiet.parent.mkdir(parents=True, exist_ok=True)
    sides = {}
    for name, words in (("run", settings["eval_words"]), ("more", budget)):
        refs = reference_scores(data, pop, corpus, proxy, v0, central, words, quiet)
        if name == "run":
            kb, glob = settings["_fed"]["final_metrics"], settings["_fed"]["global_metrics"]
        else:
            with stderr_to(quiet):
                kb = score_version(final, pop.heldout, words, personal=True)
                glob = score_version(final, pop.heldout, words, personal=False)
        refs["shippable"] = max((refs["ngram_proxy"], refs["proxy_lstm"]), key=lambda m: m["top3"])
        sides[name] = {**refs, "keyboard": kb, "global": glob}
    out: dict = {"heldout_users": pop.test_users, "heldout_words": total}
    for weighting, side in (("run", "run"), ("every_word", "more"), ("every_user", "more")):
        rows, got = {}, sides[side]
        for label, a, b, metric in CLAIMS:
            if b not in got or "per_user" not in got[a] or "per_user" not in got[b]:
                continue
            if weighting == "every_user":
                rows[label] = list(user_mean_difference(got[a]["per_user"], got[b]["per_user"], metric))
            else:
                lo, hi = paired_interval(got[a]["per_user"], got[b]["per_user"], metric)
                rows[label] = [(got[a][metric] - got[b][metric]) * 100, lo, hi]
        per_user = got["keyboard"]["per_user"]
        out[weighting] = {"words": got["keyboard"]["words"], "users": sum(1 for c in per_user if c[0]),
                          "claims": rows}
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eval_words < 0:
        raise ValueError("--eval-words must be >= 0 (0: every held-out word)")
    out = rescore(Path(args.data_dir), args)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    heads = {"run": "the run's words", "every_word": "every word the same", "every_user": "every user the same"}
    print(f"{out['heldout_users']} held-out users, {out['heldout_words']:,} scorable words; differences in points "
          "(95% interval over users)")
    for w, head in heads.items():
        print(f"\n{head}: {out[w]['words']:,} words of {out[w]['users']} users")
        for label, (d, lo, hi) in out[w]["claims"].items():
            print(f"  {label:50s} {d:+5.1f} ({lo:+.1f} to {hi:+.1f})")
    return 0


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
