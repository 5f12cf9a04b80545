"""The FedKeys next-token model: one readable file, plain `tf.Variable`s in a `tf.Module`.

Written by hand, not with Keras layers, because only this form converts to TFLite with
builtin ops alone and still trains there (see shared/notes/tflite-on-device-training.md):
the LSTM is unrolled over a fixed window with `tf.unstack`, the loss is spelled out, and
the update is `assign_sub`. Shapes in comments: B batch, T window, E embedding, H hidden,
V vocabulary, N beams.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from protocol.arch import ModelConfig


class NextWordLSTM(tf.Module):
    def __init__(self, cfg: ModelConfig, seed: int = 0):
        super().__init__(name="fedkeys_lstm")
        self.cfg = cfg
        rng = np.random.default_rng(seed)
        self.vars: dict[str, tf.Variable] = {}
        for name, shape in cfg.weight_shapes():
            if name.endswith("bias"):
                init = np.zeros(shape, np.float32)
            elif name == "embedding":
                init = rng.normal(0.0, 0.05, shape).astype(np.float32)
            else:  # Glorot uniform
                lim = np.sqrt(6.0 / (shape[0] + shape[-1]))
                init = rng.uniform(-lim, lim, shape).astype(np.float32)
            self.vars[name] = tf.Variable(init, name=name)
        self.names = [n for n, _ in cfg.weight_shapes()]

    @property
    def variables_in_order(self) -> list[tf.Variable]:
        return [self.vars[n] for n in self.names]

    # --- building blocks -------------------------------------------------------------
    def _cell(self, x, h, c, w=None):
        """One LSTM step. x (B,E), h (B,H), c (B,H) -> h, c. Forget gate biased by +1.

        `w` overrides the weights (the `infer` signature passes constants)."""
        w = w or self.vars
        z = tf.matmul(tf.concat([x, h], axis=1), w["lstm_kernel"]) + w["lstm_bias"]
        i, f, g, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, c

    def _logits(self, h, w=None):
        """h (N,H) -> logits (N,V)."""
        w = w or self.vars
        if self.cfg.tie_embeddings:
            proj = tf.matmul(h, w["out_proj"])                                          # (N,E)
            return tf.matmul(proj, w["embedding"], transpose_b=True) + w["out_bias"]
        return tf.matmul(h, w["out_kernel"]) + w["out_bias"]

    def window_logits(self, x, dropout: float = 0.0):
        """x (B,T) int32 -> logits (B*T,V), from a zero state (each window stands alone).

        `dropout` (central pretraining only; the exported signatures use 0) drops the LSTM's
        inputs and outputs, not its recurrent state (Zaremba et al. 2014): a regulariser for
        the proxy text, which the model otherwise fits better than the text it is used on."""
        T, H = self.cfg.seq_len, self.cfg.hidden_dim
        emb = tf.gather(self.vars["embedding"], x)                                     # (B,T,E)
        if dropout:
            emb = tf.nn.dropout(emb, dropout)
        batch = tf.shape(x)[0]
        h = tf.zeros([batch, H])
        c = tf.zeros([batch, H])
        hs = []
        for xt in tf.unstack(emb, T, axis=1):  # not x[:, t]: StridedSliceGrad is a Flex op
            h, c = self._cell(xt, h, c)
            hs.append(h)
        hs = tf.reshape(tf.stack(hs, axis=1), [-1, H])                                  # (B*T,H)
        if dropout:
            hs = tf.nn.dropout(hs, dropout)
        return self._logits(hs)

    def token_nll(self, x, y, dropout: float = 0.0):
        """Per-token negative log-likelihood (B*T,) and the logits, loss written out by hand."""
        logits = self.window_logits(x, dropout)
        target = tf.reshape(y, [-1])
        lse = tf.reduce_logsumexp(logits, axis=1)
        tgt = tf.reduce_sum(tf.one_hot(target, self.cfg.vocab_size) * logits, axis=1)
        return lse - tgt, logits, tgt

    def loss(self, x, y, mask, dropout: float = 0.0):
        nll, _, _ = self.token_nll(x, y, dropout)
        m = tf.reshape(mask, [-1])
        return tf.reduce_sum(nll * m) / tf.maximum(tf.reduce_sum(m), 1.0)

    # --- signatures ----------------------------------------------------------------------
    def train_step(self, x, y, mask, lr):
        """One SGD step with global-norm clipping; returns the loss before the update, shape (1,)."""
        with tf.GradientTape() as tape:
            loss = self.loss(x, y, mask)
        variables = self.variables_in_order
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(g * g) for g in grads]))
        scale = self.cfg.clip_norm / tf.maximum(norm, self.cfg.clip_norm)
        rate = tf.reshape(lr, []) * scale
        for v, g in zip(variables, grads):
            v.assign_sub(rate * g)
        return {"loss": tf.reshape(loss, [1])}

    def evaluate(self, x, y, mask):
        """Summed loss, top-1/top-3 hits and token count over the masked tokens (no update)."""
        nll, logits, tgt = self.token_nll(x, y)
        m = tf.reshape(mask, [-1])
        rank = tf.reduce_sum(tf.cast(logits > tgt[:, None], tf.float32), axis=1)  # tokens scored above target
        one = lambda t: tf.reshape(t, [1])  # noqa: E731
        return {
            "loss_sum": one(tf.reduce_sum(nll * m)),
            "top1": one(tf.reduce_sum(tf.cast(rank < 1.0, tf.float32) * m)),
            "top3": one(tf.reduce_sum(tf.cast(rank < 3.0, tf.float32) * m)),
            "count": one(tf.reduce_sum(m)),
        }

    def step(self, tokens, h, c, w=None):
        """Feed one token per beam: tokens (N,), state (N,H) -> next-token log-probs (N,V), state."""
        w = w or self.vars
        x = tf.gather(w["embedding"], tokens)
        h, c = self._cell(x, h, c, w)
        return {"logprobs": tf.nn.log_softmax(self._logits(h, w), axis=1), "h": h, "c": c}

    def get_weights(self):
        return {n: tf.identity(self.vars[n]) for n in self.names}

    def set_weights(self, **weights):
        for n in self.names:
            self.vars[n].assign(weights[n])
        return {"ok": tf.ones([1])}


def probe_weights(cfg: ModelConfig, seed: int = 1234) -> dict[str, np.ndarray]:
    """Distinctive placeholder values for the `infer` signature's constants.

    The exporter finds them in the flatbuffer by their bytes (random floats never collide with
    anything else there) and records where they are; a device overwrites them with a version's
    weights before it creates the interpreter.
    """
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1.0, 1.0, s).astype(np.float32) for n, s in cfg.weight_shapes()}


def signature_functions(m: NextWordLSTM) -> dict[str, tf.types.experimental.ConcreteFunction]:
    """The six signatures with fixed, documented input specs (see protocol.arch).

    `infer` is `step` over constant weights: constant weights let the interpreter pre-pack its
    matrix kernels, which a resource variable read on every call prevents (~4x faster per
    keystroke). Its constants are placeholders patched on the device (see probe_weights).
    """
    cfg = m.cfg
    B, T, H = cfg.train_batch, cfg.seq_len, cfg.hidden_dim
    spec = tf.TensorSpec
    win = [spec([B, T], tf.int32, name="x"), spec([B, T], tf.int32, name="y"), spec([B, T], tf.float32, name="mask")]
    train = tf.function(m.train_step, input_signature=win + [spec([1], tf.float32, name="lr")])
    evaluate = tf.function(m.evaluate, input_signature=win)
    state_specs = [spec([None], tf.int32, name="tokens"), spec([None, H], tf.float32, name="h"),
                   spec([None, H], tf.float32, name="c")]
    step = tf.function(m.step, input_signature=state_specs)
    frozen = {n: tf.constant(v) for n, v in probe_weights(cfg).items()}
    infer = tf.function(lambda tokens, h, c: m.step(tokens, h, c, frozen), input_signature=state_specs)
    get_w = tf.function(m.get_weights, input_signature=[])
    set_specs = [spec(s, tf.float32, name=n) for n, s in cfg.weight_shapes()]

    def _set(*args):
        return m.set_weights(**dict(zip(m.names, args)))

    set_w = tf.function(_set, input_signature=set_specs)
    return {
        "train": train.get_concrete_function(),
        "evaluate": evaluate.get_concrete_function(),
        "step": step.get_concrete_function(),
        "infer": infer.get_concrete_function(),
        "get_weights": get_w.get_concrete_function(),
        "set_weights": set_w.get_concrete_function(),
    }
