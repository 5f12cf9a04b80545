"""The keyboard's word vocabulary, stored as a SentencePiece `word` model, learned from proxy text only.

Why words: the keyboard suggests whole words, so the model's softmax is over words and every
suggestion is a vocabulary word (a piece model assembles non-words such as ``must't``). Text is
split into words and punctuation marks first (`protocol.text.tokens`); SentencePiece's `word`
model then keeps the most frequent tokens, and everything else maps to <unk>. The file format
stays SentencePiece's, so versions keep shipping one `tokenizer.model` with its sha256; it is
read back with `protocol.text.load_tokenizer` (the device and the tools read it too).

The word list is larger than the LSTM's softmax: ids are in frequency order, the LSTM models
the first `ModelConfig.vocab_size` and treats the rest as <unk>, whose probability the
predictor shares among them by their proxy frequency (`protocol.text.Vocab`). So a rare word can
still be completed, at no cost in parameters.

The server never holds device text in a real deployment, so the vocabulary (like version 0)
comes from proxy data; words a user types that it lacks are handled on the device (the personal
model in `edge_runtime.personal`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from protocol.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, tokens


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int = 50000, *,
                    max_sentences: int = 2_000_000) -> Path:
    """Keep the `vocab_size` most frequent tokens of `texts` (after `tokens`) and write the model.

    This is the keyboard's word list; the LSTM models only its most frequent part
    (`ModelConfig.vocab_size`), see `protocol.text.Vocab`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=(" ".join(tokens(t)) for t in texts),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="word",
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        hard_vocab_limit=False,  # a tiny corpus may not have `vocab_size` distinct tokens
        max_sentence_length=1 << 16,
        minloglevel=2,
        num_threads=2,
    )
    out_path.write_bytes(buf.getvalue())
    return out_path
