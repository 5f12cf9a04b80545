"""Builds a tiny but real model version for the tests (needs TensorFlow).

Run in the full environment; the slim edge environment gets the result through
FEDKEYS_TEST_VERSION, since it cannot build one without TensorFlow:

    python -m tests.tiny_version OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "corpora" / "shakespeare.jsonl"

TINY = dict(vocab_size=320, embed_dim=16, hidden_dim=32, train_batch=4, seq_len=8)
TINY_WORD_LIST = 800  # the word list goes beyond the LSTM's softmax, as in the real model


def tiny_texts(n: int = 1500) -> list[str]:
    from model.corpus import read_corpus

    return [r.text for r in read_corpus(SHAKESPEARE)[:n]]


def build(out: str | Path, steps: int = 150) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from model.export import export_version
    from model.lstm import NextWordLSTM
    from model.pretrain import TrainSettings, train
    from model.tokenizer import train_tokenizer
    from protocol.arch import ModelConfig
    from protocol.text import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = tiny_texts()
    tok = train_tokenizer(texts, out / "tokenizer.model", vocab_size=TINY_WORD_LIST)
    sp = load_tokenizer(tok)
    m = NextWordLSTM(ModelConfig(**{**TINY, "vocab_size": min(TINY["vocab_size"], sp.get_piece_size())}), seed=0)
    train(m, sp, texts[:1200], texts[1200:], TrainSettings(epochs=1, steps_per_epoch=steps, batch_size=32,
                                                           learning_rate=1e-2, progress=False))
    export_version(m, tok, out, version_id="tiny-v0")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.tiny_version OUT_DIR")
    print(build(sys.argv[1]))
