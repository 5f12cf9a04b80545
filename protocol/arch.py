"""The model's architecture and the names every deployable agrees on.

Signature names, their tensor names and shapes are constants here and nowhere else: the
exporter (`model/`) builds them, the edge runtime calls them, the tests tie the two together.

`Arch` is the typed form of a manifest's ``arch`` record (``{"model": ModelConfig,
"signatures": [...], "infer_patches": {...}}``, written by `model.export`): every deployable
reads the architecture through `Manifest.architecture()`, never by indexing the dict. The
dict itself stays in the manifest as written, because `arch_hash` and the coordinator's
signature cover its exact bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 10000     # words the softmax models (Gboard: 10k); rarer list words share <unk>
    embed_dim: int = 96         # input embedding width (and output embedding width when tied)
    hidden_dim: int = 256       # LSTM state width (2-core CPUs pretrain ~4k tokens/s at this size)
    tie_embeddings: bool = True  # logits = (h @ proj) @ embedding.T: saves vocab*hidden parameters
    train_batch: int = 16       # fixed batch of the `train`/`evaluate` signatures (dynamic shapes bring Flex ops)
    seq_len: int = 20           # fixed window length T of `train`/`evaluate`, unrolled in the graph
    clip_norm: float = 5.0      # global gradient-norm clip inside `train` (plain SGD on an LSTM can blow up)

    def __post_init__(self) -> None:
        # A manifest is JSON from outside: a string or a negative size must stop here, with its
        # name, not as a TypeError deep in the interpreter or the trainer.
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                ok = isinstance(v, bool)
            else:
                kind = int if f.type == "int" else (int, float)
                ok = isinstance(v, kind) and not isinstance(v, bool) and 0 < v < float("inf")
            if not ok:
                what = {"bool": "true or false", "int": "a positive integer"}.get(f.type, "a positive number")
                raise ValueError(f"model config {f.name} must be {what}, not {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def weight_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Trainable tensors in their fixed order (the order of get_weights/set_weights and the manifest)."""
        V, E, H = self.vocab_size, self.embed_dim, self.hidden_dim
        shapes = [
            ("embedding", (V, E)),
            ("lstm_kernel", (E + H, 4 * H)),   # gates i, f, g, o stacked along the last axis
            ("lstm_bias", (4 * H,)),
        ]
        if self.tie_embeddings:
            shapes.append(("out_proj", (H, E)))
        else:
            shapes.append(("out_kernel", (H, V)))
        shapes.append(("out_bias", (V,)))
        return shapes

    @property
    def num_params(self) -> int:
        n = 0
        for _, s in self.weight_shapes():
            p = 1
            for d in s:
                p *= d
            n += p
        return n


# Signature names (TFLite `get_signature_runner(name)`), with their inputs -> outputs.
SIG_STEP = "step"            # tokens int32[N], h float32[N,H], c float32[N,H] -> logprobs float32[N,V], h, c
SIG_TRAIN = "train"          # x int32[B,T], y int32[B,T], mask float32[B,T], lr float32[1] -> loss float32[1]
SIG_INFER = "infer"            # same as step, over constant weights patched in at load (the fast keystroke path)
SIG_EVALUATE = "evaluate"    # x, y, mask -> loss_sum, top1, top3, count (all float32[1])
SIG_GET_WEIGHTS = "get_weights"  # () -> one output per weight name
SIG_SET_WEIGHTS = "set_weights"  # one input per weight name -> ok float32[1]
SIGNATURES = (SIG_STEP, SIG_INFER, SIG_TRAIN, SIG_EVALUATE, SIG_GET_WEIGHTS, SIG_SET_WEIGHTS)
EVALUATE_OUTPUTS = ("loss_sum", "top1", "top3", "count")  # the `evaluate` signature's sums, in this order


# Weight name -> [[byte offset, transposed], ...] of the `infer` signature's placeholder constants.
InferPatches = dict[str, list[list[int]]]


@dataclass(frozen=True)
class Arch:
    """A model version's architecture: its config, its signatures, where `infer`'s constants sit."""

    model: ModelConfig
    signatures: tuple[str, ...] = SIGNATURES
    infer_patches: InferPatches = field(default_factory=dict)  # empty: no patchable `infer`

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "signatures": list(self.signatures),
                "infer_patches": self.infer_patches}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arch:
        """Raise ValueError unless `d` is an exporter's arch record (unknown model keys included)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("model"), Mapping):
            raise ValueError("arch has no model config")
        try:
            model = ModelConfig.from_dict(dict(d["model"]))
            patches = {str(k): [[int(a), int(b)] for a, b in v] for k, v in (d.get("infer_patches") or {}).items()}
            return cls(model, tuple(str(s) for s in d.get("signatures", SIGNATURES)), patches)
        except (TypeError, AttributeError) as e:
            raise ValueError(f"malformed arch: {e}") from e
