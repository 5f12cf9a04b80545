"""SentencePiece tokenizer, trained on the proxy corpus only.

The server never holds device text in a real deployment, so the tokenizer (like version 0)
comes from proxy data; devices only fine-tune. Every model compared in an evaluation shares
one tokenizer file, whose sha256 goes into each version's manifest.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from model.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int = 4000, *,
                    max_sentences: int = 300_000) -> Path:
    """Train a unigram SentencePiece model on `texts` and write it to `out_path`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        split_digits=True,
        hard_vocab_limit=False,  # a tiny corpus may not support the full vocabulary
        minloglevel=2,
        num_threads=2,
    )
    out_path.write_bytes(buf.getvalue())
    return out_path


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(path))
