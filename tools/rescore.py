"""Score a finished simulation's claims again on more held-out words, and with every user weighted the same.

    python -m tools.rescore --data-dir DIR [--eval-words N] [--central DIR] [--workers N] [--json]

A simulation scores every held-out word up to its --eval-words budget (past it, an even share per
user), and within those words every word counts the same, so where the budget holds every word,
users who type a lot weigh a lot. This scores the run's
final version and its references again on N words (default: every held-out word) and prints each of
the report's claims three ways: on the run's own words, on the N words, and on the N words with each
user's rate counted once (their mean), each with its 95% bootstrap interval over users; then every
model's top-1 / top-3 / KSR on the N words (the README's tables, from one command). References
are cached in DIR/reference.json as the simulation caches them.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from protocol.cli import HelpFormatter, Parser, add_version
from tools._cli import DEFAULT_PROXY, run, scored_name, worker_pool

CLAIMS = (  # (label, federated side, reference, metric)
    ("keyboard vs central trigram, top-3", "keyboard", "ngram", "top3"),
    ("keyboard vs central trigram, KSR", "keyboard", "ngram", "ksr"),
    ("keyboard vs its part 2+ train users typed, top-3", "keyboard", "ngram_shared", "top3"),
    ("keyboard vs best shippable, top-3", "keyboard", "shippable", "top3"),
    ("global LSTM vs central LSTM, top-3", "global", "central", "top3"),
    ("global LSTM vs central LSTM, KSR", "global", "central", "ksr"),
)
ROWS = (  # (key, label): every model scored on the N words, in the README's order
    ("ngram", "Kneser-Ney trigram, central on the train users' text (collects text)"),
    ("ngram_shared", "the same, only the words and n-grams at least 2 train users typed"),
    ("ngram_proxy", "Kneser-Ney trigram, proxy text only (shippable)"),
    ("proxy_lstm", "LSTM, proxy text only (version 0; shippable)"),
    ("keyboard_v0", "FedKeys keyboard on version 0"),
    ("global", "LSTM, federated (global model alone)"),
    ("keyboard", "FedKeys keyboard, federated"),
    ("central", "LSTM, central on all train users (collects text)"),
)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.rescore", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--data-dir", required=True, help="a finished tools.simulate or tools.demo run (its --data-dir)")
    p.add_argument("--eval-words", type=int, default=0, help="held-out words to score again (0: every one)")
    p.add_argument("--central", help="the central reference version (default: the run's, if it had one)")
    p.add_argument("--corpus", help="the run's device corpus, if it has moved since (default: the run's)")
    p.add_argument("--v0", help="the run's version 0, if it has moved since (default: the run's)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes that score held-out users at once (2 cores: 2; the counts are the same with 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _run_parts(data: Path, args: argparse.Namespace) -> tuple[dict, dict, Path, Path, Path | None]:
    """The run's settings and report, its final version, version 0 and central reference (where
    the simulation put them, unless --v0 / --central say they moved), checked."""
    from types import SimpleNamespace

    from tools.simulate.population import central_dir, v0_dir

    try:
        report = json.loads((data / "report.json").read_text())
        settings, fed = report["settings"], report["federations"][0]
        metrics = (fed["final_metrics"], fed["global_metrics"], report["references"]["ngram"],
                   report["references"]["proxy_lstm"])
        if not (isinstance(settings, dict) and isinstance(fed["name"], str) and isinstance(fed["final_version"], str)
                and all(isinstance(m, dict) for m in metrics)):
            raise TypeError
    except (OSError, ValueError, KeyError, IndexError, TypeError):   # TypeError: valid JSON, another shape
        raise ValueError(f"{data}: no finished simulation here (report.json missing or unreadable)") from None
    if not all("per_user" in m for m in metrics[:3]):
        raise ValueError(f"{data}: the run's report predates per-user counts; run the simulation again")
    final = data / "runs" / fed["name"] / "keyboard" / "models" / fed["final_version"]
    run_args = SimpleNamespace(**{"v0": None, "pretrain_v0": False, "central": None, "no_central": False,
                                  **settings})
    v0 = Path(args.v0) if args.v0 else v0_dir(data, run_args)
    central = Path(args.central) if args.central else central_dir(data, run_args)
    for what, d in (("the run's final version", final), ("version 0 (--v0 if it moved)", v0),
                    ("the central reference (--central if it moved)", central)):
        if d is not None and not (d / "manifest.json").exists():
            raise ValueError(f"{d}: {what} is not there")
    return settings, report, final, v0, central


def rescore(data: Path, args: argparse.Namespace) -> dict:
    """{weighting: {claim: [difference, low, high]}} plus the words and users each weighting covered,
    and each model's rates on the N words (`rows`: {key: {top1, top3, ksr}})."""
    from tools.simulate.population import load_population
    from tools.simulate.references import reference_scores, score_version, stderr_to
    from tools.wordeval import paired_interval, scored_words, user_mean_difference

    settings, report, final, v0, central = _run_parts(data, args)
    fed = report["federations"][0]
    corpus, proxy = args.corpus or settings.get("corpus"), list(settings.get("proxy") or DEFAULT_PROXY)
    if not corpus or "eval_words" not in settings:   # a report edited by hand, or of another tool
        raise ValueError(f"{data}: its report.json lacks the run's settings (corpus, eval_words); give --corpus, "
                         "or score a report tools.simulate or tools.demo wrote")
    if central is not None:
        from tools.simulate.population import refuse_unfit_central

        refuse_unfit_central(central, v0, corpus)
    pop = load_population(corpus, settings.get("devices"), scored=settings.get("split", "test"))
    if pop.heldout_split != settings.get("heldout_pieces", 0):   # other words, which counts alone may not show
        raise ValueError(f"{corpus}: the run typed its held-out users' documents "
                         f"{'in pieces' if settings.get('heldout_pieces') else 'whole'}, and this release types them "
                         f"{'in pieces' if pop.heldout_split else 'whole'}: run the simulation again")
    # The run's own row is read from its report; it pairs with a re-scoring only on the same words.
    run_words = list(scored_words(pop.heldout, settings["eval_words"]).values())
    if run_words != [c[0] for c in fed["final_metrics"]["per_user"]]:
        raise ValueError(f"{corpus}: its held-out words are not the ones the run scored (the corpus changed "
                         "since, or the run predates the even-share scoring order); run the simulation again")
    total = sum(scored_words(pop.heldout).values())
    quiet = data / "runs" / "rescore.log"
    quiet.parent.mkdir(parents=True, exist_ok=True)
    run_side = {**report["references"], "keyboard": fed["final_metrics"], "global": fed["global_metrics"]}
    if "keyboard_v0" not in run_side:   # a report before 7 December 2026 held the keyboard on version 0 as "proxy"
        run_side["keyboard_v0"] = run_side.pop("proxy")
    words = args.eval_words or total

    def say(line: str) -> None:   # progress on stderr: --json's stdout stays one object
        print(line, file=sys.stderr, flush=True)
    with ExitStack() as stack:   # one pool of `--workers` processes scores every LSTM, as the simulation does
        pool = None   # its processes start at the first job, under stderr_to: their output goes to the log
        if args.workers > 1:
            pool = stack.enter_context(worker_pool(args.workers))
        if central is not None and "central" not in run_side:     # the run had none: score it on the run's words
            say(f"scoring the central reference on the run's {settings['eval_words']:,} words...")
            run_side["central"] = reference_scores(data, pop, corpus, proxy, v0, central, settings["eval_words"],
                                                   quiet, args.workers, pool, say)["central"]
        say(f"scoring the references on {min(words, total):,} words of {pop.test_users} {pop.who} users "
            f"(cached in {data / 'reference.json'})...")
        more = reference_scores(data, pop, corpus, proxy, v0, central, words, quiet, args.workers, pool, say)
        for key, personal in (("keyboard", True), ("global", False)):
            with stderr_to(quiet):
                more[key] = score_version(final, pop.heldout, words, personal=personal, pool=pool,
                                          workers=args.workers)
            say(f"  {key} (the run's final version): top-3 {more[key]['top3']:.1%}")
    out: dict = {"heldout_users": pop.test_users, "heldout_words": total, "split": pop.scored}
    for weighting, got in (("run", run_side), ("every_word", more), ("every_user", more)):
        got["shippable"] = max((got["ngram_proxy"], got["proxy_lstm"]), key=lambda m: m["top3"])
        rows = {}
        for label, a, b, metric in CLAIMS:
            if b not in got:
                continue
            if weighting == "every_user":
                rows[label] = list(user_mean_difference(got[a]["per_user"], got[b]["per_user"], metric))
            else:
                lo, hi = paired_interval(got[a]["per_user"], got[b]["per_user"], metric)
                rows[label] = [(got[a][metric] - got[b][metric]) * 100, lo, hi]
        out[weighting] = {"words": got["keyboard"]["words"],
                          "users": sum(1 for c in got["keyboard"]["per_user"] if c[0]), "claims": rows}
    out["rows"] = {key: {m: more[key][m] for m in ("top1", "top3", "ksr")} for key, _ in ROWS if key in more}
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.eval_words < 0:
        raise ValueError("--eval-words must be >= 0 (0: every held-out word)")
    if not 1 <= args.workers <= 64:
        raise ValueError("--workers must be in [1, 64], as tools.simulate's")
    from tools.simulate import SimulationError
    from tools.simulate.cli import data_dir_lock

    try:
        with data_dir_lock(Path(args.data_dir)):   # a simulation started meanwhile would replace what it scores
            out = rescore(Path(args.data_dir), args)
    except SimulationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    heads = {"run": "the run's words", "every_word": "every word the same", "every_user": "every user the same"}
    print(f"{out['heldout_users']} {scored_name(out['split'])} users, "
          f"{out['heldout_words']:,} scorable words; differences in points "
          "(95% interval over users)")
    for w, head in heads.items():
        print(f"\n{head}: {out[w]['words']:,} words of {out[w]['users']} users")
        for label, (d, lo, hi) in out[w]["claims"].items():
            spread = "(one user: no interval)" if lo is None else f"({lo:+.1f} to {hi:+.1f})"
            print(f"  {label:50s} {d:+5.1f} {spread}")
    print(f"\nevery model on those {out['every_word']['words']:,} words\n")
    print("| model | top-1 | top-3 | KSR |\n|---|---:|---:|---:|")
    for key, label in ROWS:
        if key in out["rows"]:
            r = out["rows"][key]
            print(f"| {label} | {r['top1']:.1%} | {r['top3']:.1%} | {r['ksr']:.1%} |")
    return 0


def cli() -> None:
    run(main)


if __name__ == "__main__":
    cli()
