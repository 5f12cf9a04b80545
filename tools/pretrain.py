"""Train a model version centrally and export it for the devices.

    python -m tools.pretrain --proxy FILE --out DIR            # version 0: tokenizer + model from proxy text
    python -m tools.pretrain --corpus FILE --init DIR --out DIR # central reference: continue on a corpus's train users

Version 0 comes from proxy text only (the server never holds device text); the second form
trains centrally on the device corpus's training users, the upper bound federated learning
is measured against. Both write a complete, linted version directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from protocol import wire
from protocol.cli import HelpFormatter, Parser, add_version
from tools._cli import quiet_tensorflow, run

CORPUS_SPLIT_SEED = 0   # tools.evaluate, ablation and simulate hold out the users this seed holds out


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m tools.pretrain", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    add_version(p)
    p.add_argument("--out", required=True, help="version directory to write")
    p.add_argument("--proxy", action="append", default=None,
                   help="proxy corpus (JSONL/text) for the vocabulary and version 0, required unless --corpus; "
                        "repeat to combine, e.g. --proxy corpora/gutenberg_mix.jsonl --proxy corpora/sotu.jsonl")
    p.add_argument("--corpus", help="train on this corpus's train users instead of the proxy (needs --init)")
    p.add_argument("--init", help="start from this version directory (its tokenizer and architecture)")
    p.add_argument("--version-id", default=None, help="version id in the manifest (default: v0, or central)")
    p.add_argument("--vocab-size", type=int, default=10000, help="words the LSTM's softmax models")
    p.add_argument("--word-list-size", type=int, default=50000,
                   help="words in the keyboard's word list (the rest of the list beyond --vocab-size is "
                        "suggested through the LSTM's <unk> by frequency)")
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap each epoch (default: a full pass)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay-to", type=float, default=1.0, metavar="FRACTION",
                   help="decay the learning rate along a cosine to this fraction of --lr by the last step "
                        "(default: 1, a constant rate)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="drop this fraction of the LSTM's inputs and outputs while training (a regulariser; "
                        "the exported model has none)")
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--seed", type=int, default=0,
                   help="weights' initialisation and batch order; with --proxy also the train/validation split "
                        "(a --corpus is always split as every tool splits it, so its held-out users stay held out)")
    p.add_argument("--force", action="store_true",
                   help="replace the model version --out holds (without it, one there is refused)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.proxy or args.corpus):
        raise ValueError("say what to train on: --proxy FILE (version 0) or --corpus FILE --init DIR "
                         "(central reference); nothing starts a long run on a default file")
    if not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.corpus and not args.init:
        raise ValueError("--corpus trains on device text and needs --init DIR "
                         "(the tokenizer must come from proxy data)")
    _check_numbers(args)
    if args.version_id is not None and not wire.is_safe_id(args.version_id):
        raise ValueError(f"--version-id {args.version_id!r} must be letters, digits, '.', '_' or '-' (a "
                         "coordinator refuses any other id at import, after the whole run)")
    out = Path(args.out).resolve()   # "." had no name to stage beside, and the run was lost at its end
    _check_out(out, args.force)
    if args.init and not (Path(args.init) / "manifest.json").is_file():   # before minutes of reading the corpus
        raise ValueError(f"--init {args.init} is not a model version directory (no manifest.json)")
    quiet_tensorflow()
    # Everything is written to a staging directory beside --out and moved into place at the end,
    # so a failed or interrupted run leaves --out as it was (an earlier version stays loadable).
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.incoming-", dir=out.parent))
    try:
        return _train_and_export(args, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Bounds far past a device's budget: beyond them (--seq-len 100000, --hidden-dim 200000) memory runs
# away or training ends in a traceback.
MAX_SEQ_LEN, MAX_DIM, MAX_WORDS = 512, 4096, 1_000_000


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse settings that would train nothing, or NaN, before any work (one line each)."""
    for name in ("epochs", "batch_size", "embed_dim", "hidden_dim", "patience"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise ValueError(f"--steps-per-epoch must be >= 1 (or left out for a full pass), got {args.steps_per_epoch}")
    if not 2 <= args.seq_len <= MAX_SEQ_LEN:
        raise ValueError(f"--seq-len must be in [2, {MAX_SEQ_LEN}] (a window predicts its next tokens; the graph "
                         f"unrolls it), got {args.seq_len}")
    if args.vocab_size < 16 or args.word_list_size < 16:
        raise ValueError("--vocab-size and --word-list-size must be >= 16")
    for name, hi in (("embed_dim", MAX_DIM), ("hidden_dim", MAX_DIM), ("vocab_size", MAX_WORDS),
                     ("word_list_size", MAX_WORDS)):
        if getattr(args, name) > hi:   # far past any device's budget: memory ran away, or a traceback
            raise ValueError(f"--{name.replace('_', '-')} must be <= {hi:,}, got {getattr(args, name):,}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if not (math.isfinite(args.lr_decay_to) and 0 < args.lr_decay_to <= 1):
        raise ValueError(f"--lr-decay-to must be in (0, 1], got {args.lr_decay_to}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")


def _check_out(out: Path, force: bool = False) -> None:
    """--out is new, empty or, with --force, a version directory (replaced at the end); never a
    user's other folder. Without --force an existing version is refused: `--out models/v0` had
    silently replaced the shipped version 0 with whatever the run trained."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the version")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ValueError(f"--out {out} holds files but no model version (no manifest.json); "
                         "give a new or empty directory")
    if (out / "manifest.json").is_file() and not force:
        raise ValueError(f"--out {out} holds a model version already; give a new directory, or --force to "
                         "replace it (it is replaced only once the new one is complete)")


def _train_and_export(args: argparse.Namespace, out: Path, work: Path) -> int:
    from model.corpus import read_corpus, split_users
    from model.export import export_version, load_module
    from model.lstm import NextWordLSTM
    from model.pretrain import TrainSettings, train
    from model.tokenizer import train_tokenizer
    from protocol.arch import ModelConfig
    from protocol.text import load_tokenizer

    t0 = time.time()
    sources = [args.corpus] if args.corpus else args.proxy
    source = " + ".join(Path(s).name for s in sources)
    # A device corpus is split as every tool splits it (seed 0): with --seed 1 the central reference
    # would train on 18 of Shakespeare's 24 held-out users, and score better on them.
    split_seed = CORPUS_SPLIT_SEED if args.corpus else args.seed
    split = split_users([r for s in sources for r in read_corpus(s)], seed=split_seed)
    train_texts, val_texts = split.texts("train"), split.texts("validation")
    print(f"{source}: {len(split.train)} train users ({len(train_texts)} texts), "
          f"{len(split.validation)} validation users, {len(split.test)} test users")
    notices: dict[str, str] = {}
    if args.init:
        m, base = load_module(args.init)
        tok_path = Path(args.init) / "tokenizer.model"
        parent = base.version_id
        notices = base.notices   # the same word list, so the same licence notice
    else:
        tok_path = work / "tokenizer.model"
        print(f"building the word list ({args.word_list_size} words, the LSTM models {args.vocab_size}) "
              "from proxy text...")
        train_tokenizer(train_texts + val_texts, tok_path, vocab_size=max(args.word_list_size, args.vocab_size))
        sp = load_tokenizer(tok_path)
        cfg = ModelConfig(vocab_size=min(args.vocab_size, sp.get_piece_size()), embed_dim=args.embed_dim,
                          hidden_dim=args.hidden_dim,
                          seq_len=args.seq_len)
        m, parent = NextWordLSTM(cfg, seed=args.seed), None
    sp = load_tokenizer(tok_path)
    print(f"model: {m.cfg.num_params:,} parameters ({m.cfg.to_dict()})")
    settings = TrainSettings(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                             learning_rate=args.lr, lr_decay_to=args.lr_decay_to, patience=args.patience,
                             dropout=args.dropout, seed=args.seed, progress=not args.no_progress)
    hist = train(m, sp, train_texts, val_texts, settings)
    version_id = args.version_id or ("central" if args.init else "v0")
    # What it was trained from, so a later run can tell whether this version still fits its inputs
    # (tools.simulate reuses a central reference only for the same corpus and version 0).
    metrics: dict = {"pretrain": hist.to_dict(), "source": source, "source_sha256": sources_sha256(sources),
                     "split_seed": split_seed}
    if args.init:
        metrics["init_weights_sha256"] = base.weights_sha256
    if args.init and version_id == parent:
        # A further stage of the same version (make v0 continues on more proxy text): it keeps the
        # earlier stages' record and parent instead of naming itself as its parent.
        metrics["earlier_stages"] = [*base.metrics.get("earlier_stages", []),
                                     {k: v for k, v in base.metrics.items() if k != "earlier_stages"}]
        parent = base.parent
    print("exporting to TFLite (builtin ops only) and linting in the slim interpreter...")
    manifest = export_version(m, tok_path, work, version_id=version_id, parent=parent, metrics=metrics,
                              notices=notices)
    os.chmod(work, 0o755)   # mkdtemp's 0700: the service's user imports it (deploy/), as its files are 0644
    _replace(work, out)
    print(json.dumps({"version": manifest.version_id, "dir": str(out), "params": manifest.num_params,
                      "val_loss": hist.val_loss, "seconds": round(time.time() - t0, 1)}))
    return 0


def sources_sha256(paths: list[str]) -> str:
    """sha256 over the training files' bytes, in order (read in blocks: corpora can be large)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _replace(work: Path, out: Path) -> None:
    """Move the finished version into --out: the old one aside first, deleted only once the new is in."""
    old = work.with_name(work.name.replace(".incoming-", ".replaced-"))
    if out.exists():
        out.rename(old)
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def cli() -> None:
    """The `fedkeys-pretrain` console script."""
    run(main)


if __name__ == "__main__":
    cli()
