"""On-device training and evaluation tasks, through the model's TFLite signatures.

Training fine-tunes one version on the cache's training records following the coordinator's
`TrainPlan`, and returns the clipped, noised update (edge_runtime.update). Evaluation runs
one or more versions on the held-out records and returns aggregate metrics only.

Windows are cut exactly as in pre-training (protocol.text.windows): each text is ``[BOS] ... [EOS]``,
cut into T+1-token windows with stride T, every window from a zero state. The `train` and
`evaluate` signatures take a fixed batch B (`train_batch` of the manifest's architecture), so a plan
batch smaller than B fills the rest of the batch with fully masked rows.

Eligibility is checked before every step; when it lapses, `TrainingAborted` is raised and no
update exists (a partial update is never sent). Nothing here logs or returns text.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import EdgeError
from edge_runtime.update import NoiseSource, Update, build_update
from protocol.arch import EVALUATE_OUTPUTS, SIG_EVALUATE, SIG_TRAIN
from protocol.artifact import TOKENIZER, Manifest, load_version
from protocol.text import encode_texts, load_tokenizer, windows
from protocol.wire import TrainPlan, VersionMetrics

log = logging.getLogger(__name__)


class SignatureModel(Protocol):
    """What the trainer needs from protocol.interpreter.Model."""

    def runner(self, name: str) -> Callable[..., Mapping[str, np.ndarray]]: ...
    def get_weights(self) -> dict[str, np.ndarray]: ...
    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None: ...


ModelLoader = Callable[[Path], SignatureModel]
EligibilityCheck = Callable[[], object]   # returns something truthy (e.g. a Decision) when eligible


def load_model(version_dir: Path) -> SignatureModel:
    """The real interpreter (imported lazily so pure parts work without a TFLite runtime)."""
    from protocol.interpreter import Model

    return Model.load(version_dir, verify=False)  # the caller has just verified it


class TrainingAborted(EdgeError):
    """Training stopped before the plan finished; there is no update to send."""

    def __init__(self, reason: str, steps_done: int = 0) -> None:
        super().__init__(f"training aborted after {steps_done} steps: {reason}")
        self.reason = reason
        self.steps_done = steps_done


@dataclass(frozen=True)
class TrainResult:
    update: Update
    steps: int
    examples: int             # distinct windows trained on (the FedAvg weight)
    first_loss: float
    last_loss: float
    seconds: float


@dataclass(frozen=True)
class Windows:
    x: np.ndarray             # (N, T) int32
    y: np.ndarray             # (N, T) int32
    mask: np.ndarray          # (N, T) float32, 0 on padding

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: np.ndarray) -> Windows:
        return Windows(self.x[idx], self.y[idx], self.mask[idx])


def text_windows(version_dir: Path, texts: Iterable[str], manifest: Manifest) -> Windows:
    """Tokenize with the version's own tokenizer and cut (x, y, mask) windows for its model."""
    sp = load_tokenizer(Path(version_dir) / TOKENIZER)
    cfg = manifest.architecture().model
    # The softmax models the first vocab_size words; the rest of the word list is <unk> to it.
    return Windows(*windows(encode_texts(sp, texts, cfg.vocab_size), cfg.seq_len))


def fixed_batch(w: Windows, idx: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows `idx` of `w` in a (batch, T) block; unused rows are zero with mask 0."""
    if len(idx) > batch:
        raise ValueError(f"{len(idx)} rows do not fit a batch of {batch}")
    T = w.x.shape[1]
    x = np.zeros((batch, T), np.int32)
    y = np.zeros((batch, T), np.int32)
    m = np.zeros((batch, T), np.float32)
    x[:len(idx)], y[:len(idx)], m[:len(idx)] = w.x[idx], w.y[idx], w.mask[idx]
    return x, y, m


def _arch_shape(manifest: Manifest) -> tuple[int, int]:
    """(train_batch, seq_len) of the fixed-shape signatures (ArtifactError, a ValueError, if the
    manifest has no architecture)."""
    cfg = manifest.architecture().model
    return cfg.train_batch, cfg.seq_len


def check_eligible(eligible: EligibilityCheck | None, deadline: float | None = None, steps: int = 0) -> None:
    """Raise TrainingAborted, with the reasons, once the time is up or the device may not work on."""
    if deadline is not None and time.monotonic() > deadline:
        raise TrainingAborted("time limit reached", steps)
    if eligible is not None:
        decision = eligible()
        if not decision:
            reasons = getattr(decision, "reasons", ()) or ("not eligible",)
            raise TrainingAborted("; ".join(reasons), steps)


def sgd(model: SignatureModel, data: Windows, *, epochs: int, rows: int, batch: int, learning_rate: float,
        rng: np.random.Generator, eligible: EligibilityCheck | None = None,
        deadline: float | None = None) -> tuple[int, float, float]:
    """`epochs` passes of the `train` signature over `data` in shuffled batches of `rows`
    (steps, first loss, last loss). Eligibility is checked before every step and at the end;
    a non-finite loss aborts. The one training loop of the device: federated updates and the
    user's personal model both run it."""
    step = model.runner(SIG_TRAIN)
    lr = np.array([learning_rate], np.float32)
    n = len(data)
    steps, first_loss, last_loss = 0, math.nan, math.nan
    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, rows):
            check_eligible(eligible, deadline, steps)
            x, y, m = fixed_batch(data, order[i:i + rows], batch)
            loss = float(np.asarray(step(x=x, y=y, mask=m, lr=lr)["loss"]).reshape(-1)[0])
            if not math.isfinite(loss):
                raise TrainingAborted("loss is not finite", steps)
            first_loss = loss if steps == 0 else first_loss
            last_loss = loss
            steps += 1
    check_eligible(eligible, deadline, steps)
    return steps, first_loss, last_loss


def train(
    version_dir: str | Path,
    texts: Iterable[str],
    plan: TrainPlan,
    *,
    eligible: EligibilityCheck | None = None,
    time_limit_s: float | None = None,
    loader: ModelLoader = load_model,
    shuffle_seed: int | None = None,
    noise: NoiseSource | None = None,
) -> TrainResult:
    """Fine-tune the version in `version_dir` on `texts` and return its private update."""
    t0 = time.monotonic()
    deadline = None if time_limit_s is None else t0 + time_limit_s
    version_dir = Path(version_dir)
    manifest, base = load_version(version_dir, verify=True)
    B, T = _arch_shape(manifest)
    rows = min(plan.batch_size, B)
    if plan.batch_size > B:
        log.warning("plan batch %d > model batch %d; training with %d", plan.batch_size, B, B)

    data = text_windows(version_dir, texts, manifest)
    if len(data) == 0:
        raise TrainingAborted("no training text in the cache")
    rng = np.random.default_rng(shuffle_seed)  # order only, not privacy-relevant
    if len(data) > plan.max_examples:
        data = data.take(np.sort(rng.choice(len(data), plan.max_examples, replace=False)))
    n = len(data)

    check_eligible(eligible, deadline, 0)
    model = loader(version_dir)
    model.set_weights(base)  # start exactly from the manifest's weights, whatever load did
    steps, first_loss, last_loss = sgd(model, data, epochs=plan.epochs, rows=rows, batch=B,
                                       learning_rate=plan.learning_rate, rng=rng, eligible=eligible,
                                       deadline=deadline)

    update = build_update(model.get_weights(), base, manifest, example_count=n, clip_norm=plan.clip_norm,
                          noise_multiplier=plan.noise_multiplier, source=noise)
    secs = time.monotonic() - t0
    losses = f"{first_loss:.3f}" if steps == 1 else f"{first_loss:.3f} -> {last_loss:.3f}"   # one step: no "after"
    log.info("trained %s: %d steps, %d examples, loss %s, %.1fs, update %s %.1f kB (encoding error %.1e)",
             manifest.version_id, steps, n, losses, secs, update.encoding, len(update.delta) / 1024, update.rel_error)
    return TrainResult(update, steps, n, first_loss, last_loss, secs)


def evaluate_windows(model: SignatureModel, weights: dict[str, np.ndarray], data: Windows, batch: int, *,
                     eligible: EligibilityCheck | None = None) -> dict[str, float]:
    """The `evaluate` signature's outputs (EVALUATE_OUTPUTS) summed over `data` for `weights`."""
    model.set_weights(weights)
    run = model.runner(SIG_EVALUATE)
    totals = dict.fromkeys(EVALUATE_OUTPUTS, 0.0)
    for i in range(0, len(data), batch):
        check_eligible(eligible, None, i // batch)
        x, y, m = fixed_batch(data, np.arange(i, min(i + batch, len(data))), batch)
        res = run(x=x, y=y, mask=m)
        for k in totals:
            totals[k] += float(np.asarray(res[k]).reshape(-1)[0])
    return totals


def evaluate(
    version_dirs: Sequence[str | Path],
    texts: Iterable[str],
    *,
    max_examples: int | None = None,
    eligible: EligibilityCheck | None = None,
    loader: ModelLoader = load_model,
) -> list[VersionMetrics]:
    """Run each version's `evaluate` signature over the same held-out texts; aggregates only."""
    texts = list(texts)
    out: list[VersionMetrics] = []
    for vdir in map(Path, version_dirs):
        manifest, weights = load_version(vdir, verify=True)
        B, T = _arch_shape(manifest)
        data = text_windows(vdir, texts, manifest)
        if max_examples is not None and len(data) > max_examples:
            data = data.take(np.arange(max_examples))
        totals = evaluate_windows(loader(vdir), weights, data, B, eligible=eligible)
        out.append(VersionMetrics(version_id=manifest.version_id, **totals))
        log.info("evaluated %s on %d held-out windows: %d tokens", manifest.version_id, len(data),
                 int(totals["count"]))
    return out
