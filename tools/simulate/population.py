"""Who the simulated devices are and what they start from: the corpus's users, version 0 and the
central reference.

Each device is one corpus train user; the held-out (test) users only ever score models. Version
0 and the central reference are built by `tools.pretrain` in a child process, so the simulator's
own process never loads TensorFlow (its memory would be copied into every device worker)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools._cli import DEFAULT_PROXY, REPO, count, scored_name
from tools.shipped import SHIPPED_V0, check_version
from tools.simulate.errors import SimulationError
from tools.wordeval import leak_note, one_document_corpus, typed_in_pieces


def proxy_files(args: argparse.Namespace) -> list[str]:
    """The proxy corpora: --proxy as given (repeatable), else the repository's default mix."""
    return list(args.proxy or DEFAULT_PROXY)


@dataclass(frozen=True)
class Population:
    users: list[tuple[str, list[str]]]     # (user, texts) typed on each simulated device
    heldout: dict[str, list[str]]          # test users' texts in order (tools.wordeval: first half typed)
    train_users: int
    test_users: int
    heldout_split: int = 0                 # held-out users whose one document is typed in pieces
    leak: str = ""                         # tools.wordeval.leak_note: held-out text train users also have
    scored: str = "test"                   # the part scored: test, or validation to tune without the test users

    @property
    def who(self) -> str:
        """How reports name the scored users."""
        return scored_name(self.scored)

def load_population(corpus: str, devices: int | None, *, fewer: bool = False, scored: str = "test") -> Population:
    """The `devices` train users with the most text (each device is one user; None: all of them;
    users of one text last, since they train nothing), and the held-out texts. A corpus with
    fewer train users is refused, or with `fewer` gives them all (the simulator says so).

    The users are split with seed 0, as tools.pretrain and tools.evaluate do, so the central
    reference never trained on the held-out users. `scored` "validation" scores the validation
    users instead: also never trained on, and tuning a recipe on them leaves the test users unseen."""
    from model.corpus import CorpusError, read_corpus, split_users
    records = read_corpus(corpus)
    split = split_users(records, seed=0)
    if not split.part(scored):
        raise CorpusError(f"{corpus}: no held-out ({scored}) users to evaluate on; the corpus needs more users")
    if devices is not None and len(split.train) < devices and not (fewer and split.train):
        from tools.prepare import one_writer_hint
        raise CorpusError(f"{corpus}: only {count(len(split.train), 'train user')}, fewer than --devices {devices}"
                          + one_writer_hint(corpus))
    ranked = sorted(split.train.items(), key=lambda kv: (trains_nothing(kv[1]), -sum(len(t) for t in kv[1]), kv[0]))
    # a document typed in pieces: its first paragraphs typed first
    heldout, pieces = typed_in_pieces(split.part(scored), one_document_corpus(records))
    return Population(users=ranked[:devices], heldout=heldout, train_users=len(split.train),
                      test_users=len(split.part(scored)), heldout_split=pieces,
                      leak=leak_note(split, scored, f"{scored_name(scored)} users"),
                      scored=scored)


def trains_nothing(texts: list[str]) -> bool:
    """A device keeps its newest texts back to evaluate on (`edge_runtime.cache.holdout_count`):
    a user of one text trains nothing, however long it is."""
    from edge_runtime.cache import DEFAULT_HOLDOUT_FRACTION, holdout_count

    return len(texts) == holdout_count(len(texts), DEFAULT_HOLDOUT_FRACTION)


# --- model versions -----------------------------------------------------------------------------

def _progress_args(args: argparse.Namespace) -> list[str]:
    """`--no-progress` for a child tool when this run shows none: bars redrawn with carriage
    returns fill a log file (the simulator's own rule, tools.simulate.federation)."""
    return [] if sys.stdout.isatty() and not getattr(args, "no_progress", False) else ["--no-progress"]


def _central_cap(args: argparse.Namespace) -> list[str]:
    steps = getattr(args, "central_steps_per_epoch", None)
    return ["--steps-per-epoch", str(steps)] if steps else []   # None or 0: a full pass


def _subprocess_step(title: str, module_args: list[str]) -> None:
    print(f"\n== {title}\n$ python -m {' '.join(module_args)}", flush=True)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # In the caller's directory: the paths it was given (--corpus, --data-dir) are relative to it.
    # (cwd=REPO read them from the checkout instead, so a run outside it lost its corpus.)
    res = subprocess.run([sys.executable, "-P", "-m", *module_args], env=env)   # -P: `repo_env`
    if res.returncode != 0:
        raise SimulationError(f"step '{title}' failed (exit {res.returncode})")
    print(f"   done in {time.time() - t0:.0f} s", flush=True)


def v0_dir(data: Path, args: argparse.Namespace) -> Path:
    """Where a run's version 0 is: DIR/models/v0 with --pretrain-v0, else --v0 DIR, else the
    shipped models/v0 (`ensure_v0` builds or checks it; tools.rescore finds it again)."""
    if getattr(args, "pretrain_v0", False):
        return data / "models" / "v0"
    return Path(args.v0) if args.v0 else SHIPPED_V0


def central_dir(data: Path, args: argparse.Namespace) -> Path | None:
    """Where a run's central reference is: None with --no-central, else --central DIR, else
    DIR/models/central (`ensure_central` trains it there; tools.rescore finds it again)."""
    if args.no_central:
        return None
    return Path(args.central) if args.central else data / "models" / "central"


def ensure_v0(data: Path, args: argparse.Namespace) -> Path:
    """Version 0: --v0 DIR, else the shipped models/v0 (both checked against their manifests);
    with --pretrain-v0, trained on the proxy corpus into DIR/models/v0 (reused if there)."""
    v0 = v0_dir(data, args)
    if getattr(args, "pretrain_v0", False):
        if (v0 / "manifest.json").exists() and not getattr(args, "rebuild", False):
            print(f"reusing version 0: {v0}")
            return v0
        proxy = [a for p in proxy_files(args) for a in ("--proxy", p)]
        _subprocess_step("version 0 from proxy text", ["tools.pretrain", *proxy, "--out", str(v0), "--force",
                                                       "--epochs", str(args.pretrain_epochs),
                                                       "--steps-per-epoch", str(args.pretrain_steps),
                                                       *_progress_args(args)])
        return v0
    return check_version(v0, f"version 0 ({v0})" if args.v0 else "the shipped version 0 (models/v0)").resolve()


def central_is_stale(central: Path, v0: Path | None, corpus: str, *, unrecorded_fits: bool = False) -> str | None:
    """Why a central reference left in a --data-dir does not fit this run (None: it does). Another
    --corpus or version 0 in the same directory must not be compared against it. `unrecorded_fits`:
    for one given by hand, a manifest that records no source (an older release's, a test's) is
    taken at the user's word; one that records another is refused."""
    from protocol.artifact import read_manifest
    from tools.pretrain import sources_sha256

    made = read_manifest(central).metrics
    if "source_sha256" in made and made["source_sha256"] != sources_sha256([corpus]):
        return f"it was trained on other text ({made.get('source', '?')})"
    if "source_sha256" not in made and made.get("source") != Path(corpus).name and not (
            unrecorded_fits and "source" not in made):   # given by hand, one that says nothing is taken
        return f"it was trained on {made.get('source', 'unknown text')}"
    if v0 is not None and "init_weights_sha256" in made and made["init_weights_sha256"] != \
            read_manifest(v0).weights_sha256:
        return "it continues another version 0"
    if made.get("split_seed", 0) != 0:
        return f"it was trained on another split of the users (seed {made['split_seed']}): held-out users among them"
    return None


def refuse_unfit_central(central: Path, v0: Path | None, corpus: str) -> None:
    """A central reference given by hand (`--central DIR`) must fit the run: another corpus's
    reference can move a claim by 2 points. CorpusError (exit 2) if not."""
    from model.corpus import CorpusError

    if (stale := central_is_stale(central, v0, corpus, unrecorded_fits=True)) is not None:
        raise CorpusError(f"--central {central} does not fit this run: {stale}; train one on {corpus} "
                          f"(tools.pretrain --corpus {corpus} --init {v0 or 'models/v0'} --out DIR), or leave out "
                          "--central")


def ensure_central(data: Path, v0: Path, args: argparse.Namespace) -> Path | None:
    """The central reference (v0 trained further on all train users), or None with --no-central."""
    central = central_dir(data, args)
    if central is None:
        return None
    if args.central:   # given by hand, it is checked too
        check_version(central, f"the central reference ({central})")
        refuse_unfit_central(central, v0, args.corpus)
        return central
    if (central / "manifest.json").exists() and not getattr(args, "rebuild", False):
        stale = central_is_stale(central, v0, args.corpus)
        if stale is None:
            print(f"reusing central reference: {central}")
            return central
        print(f"not reusing the central reference in {central}: {stale}; training it again")
    _subprocess_step("central reference on the corpus's train users",
                     ["tools.pretrain", "--corpus", args.corpus, "--init", str(v0), "--out", str(central), "--force",
                      "--epochs", str(args.central_epochs), "--patience", "2", "--lr", "1e-3",
                      *_central_cap(args), *_progress_args(args)])
    return central
