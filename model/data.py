"""Token windows for training and evaluation (no TensorFlow: the edge trainer uses it too).

Each text becomes ``[BOS] pieces... [EOS]``; a text is cut into windows of T+1 tokens with
stride T, every window starting from a zero state, the same as the `train` signature sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from model.config import BOS_ID, EOS_ID


def encode_texts(sp, texts: Iterable[str]) -> list[list[int]]:
    """Token ids of each text with BOS/EOS, using a SentencePieceProcessor."""
    texts = list(texts)
    return [[BOS_ID, *ids, EOS_ID] for ids in sp.encode(texts)] if texts else []


def windows(token_lists: Iterable[list[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (x, y, mask) windows, shapes (N,T); padding positions have mask 0."""
    xs, ys, ms = [], [], []
    for ids in token_lists:
        for start in range(0, max(len(ids) - 1, 1), seq_len):
            chunk = ids[start:start + seq_len + 1]
            if len(chunk) < 2:
                continue
            n = len(chunk) - 1
            x = np.zeros(seq_len, np.int32)
            y = np.zeros(seq_len, np.int32)
            m = np.zeros(seq_len, np.float32)
            x[:n], y[:n], m[:n] = chunk[:-1], chunk[1:], 1.0
            xs.append(x)
            ys.append(y)
            ms.append(m)
    if not xs:
        z = np.zeros((0, seq_len))
        return z.astype(np.int32), z.astype(np.int32), z.astype(np.float32)
    return np.stack(xs), np.stack(ys), np.stack(ms)


def batches(x: np.ndarray, y: np.ndarray, m: np.ndarray, batch: int, *, rng: np.random.Generator | None = None,
            fixed: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches in shuffled (rng) or file order. `fixed` pads the last batch with masked rows,
    because the TFLite signatures take one fixed batch shape."""
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        bx, by, bm = x[idx], y[idx], m[idx]
        if fixed and len(idx) < batch:
            pad = batch - len(idx)
            bx = np.concatenate([bx, np.zeros((pad, x.shape[1]), np.int32)])
            by = np.concatenate([by, np.zeros((pad, x.shape[1]), np.int32)])
            bm = np.concatenate([bm, np.zeros((pad, x.shape[1]), np.float32)])
        yield bx, by, bm
