"""Secure aggregation building blocks (Bonawitz et al. CCS 2017; SecAgg+: Bell et al. CCS 2020).

Both sides import this: the device masks its quantized update, the coordinator removes the
masks of the sum. Everything is pure (no I/O) and deterministic given its inputs.

* Key agreement: X25519 (`cryptography`); the shared secret goes through HKDF-SHA256 with a
  label and the round and both indices, so one exchange never yields the same key twice.
* PRG: the ChaCha20 keystream (`cryptography`) under a 32-byte seed, read as little-endian
  uint32: a mask in Z_2^32 per coordinate.
* Share encryption: ChaCha20-Poly1305 under a key agreed like the masks (a second key pair),
  the round and both indices as associated data, so the relaying coordinator can neither read
  nor re-address a share.
* Secret sharing: Shamir over the prime field GF(2^521 - 1), hand-written (see share_secret
  for why not pycryptodome's).
* Neighbour graph (SecAgg+): a Harary graph over a permutation of the cohort fixed by a public
  round seed; each device talks to k others, k sized so that the chance any device loses more
  than k - t of its neighbours at the design dropout rate is below 2^-20 per round.
"""

from __future__ import annotations

import bisect
import math
import os
import random
import secrets
import struct
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

RING_BITS = 32
SEED_BYTES = 32
KEY_BYTES = 32
SHARE_BYTES = 2 + 66                     # x-coordinate (uint16) + a point of GF(2^521 - 1)
PLAINTEXT_BYTES = 2 * SHARE_BYTES        # a self-mask share and a mask-key share, same x
CIPHERTEXT_BYTES = 12 + PLAINTEXT_BYTES + 16
MAX_FAILURE_LOG2 = -20                   # design bound on P(some device has too few neighbours left)
# The fewest neighbours a device masks with (all the others in a smaller cohort). A coordinator that
# also enrolls devices of its own needs t = k // 2 + 1 of them beside a device to unmask it; at a
# design dropout of 0 the failure bound alone gives k = 2, so without this floor 2 would be enough
# whatever the cohort. Devices refuse a roster under it (edge_runtime.secagg_client.check_roster).
MIN_DEGREE = 16


class SecAggError(ValueError):
    """A secure-aggregation message or parameter is inconsistent."""


# --- keys and key agreement --------------------------------------------------------------------

def generate_keypair() -> tuple[bytes, bytes]:
    """(private, public) raw X25519 keys, 32 bytes each."""
    sk = X25519PrivateKey.generate()
    raw = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return raw, public_key(raw)


def public_key(private: bytes) -> bytes:
    sk = X25519PrivateKey.from_private_bytes(private)
    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def usable_public_key(public: bytes) -> bool:
    """Whether an X25519 public key can be agreed with: a low-order point (all zeros, and the
    other small-subgroup points) makes every exchange with it fail. One device posting such a key
    failed every neighbour's round (each one's `agree` refused it); the coordinator refuses it."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def agree(private: bytes, peer_public: bytes, label: bytes, round_id: int, i: int, j: int) -> bytes:
    """32 bytes both ends of pair {i, j} derive alike: HKDF(X25519(sk_i, pk_j)), bound to the
    label, the round and the unordered pair."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:
        raise SecAggError(f"bad X25519 key: {e}") from e
    a, b = sorted((i, j))
    info = b"fedkeys-secagg/" + label + struct.pack("<QII", round_id, a, b)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


# --- PRG masks ---------------------------------------------------------------------------------

def prg(seed: bytes, d: int) -> np.ndarray:
    """d uint32 words of the ChaCha20 keystream under `seed` (a fresh seed per use: zero nonce)."""
    if len(seed) != SEED_BYTES:
        raise SecAggError("a PRG seed is 32 bytes")
    enc = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(4 * d)), dtype="<u4").astype(np.uint32, copy=False)


def pair_sign(i: int, j: int) -> int:
    """+1 for the lower index of a pair, -1 for the higher: the two masks cancel in the sum."""
    if i == j:
        raise SecAggError("a device is not its own neighbour")
    return 1 if i < j else -1


def add_mask(acc: np.ndarray, seed: bytes, sign: int) -> None:
    """acc += sign * PRG(seed) in Z_2^32 (uint32 arithmetic wraps)."""
    m = prg(seed, acc.size)
    if sign > 0:
        acc += m
    else:
        acc -= m


# --- share encryption --------------------------------------------------------------------------

def _aad(round_id: int, sender: int, recipient: int) -> bytes:
    return b"fedkeys-secagg-share" + struct.pack("<QII", round_id, sender, recipient)


def encrypt_share(key: bytes, round_id: int, sender: int, recipient: int, plaintext: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, _aad(round_id, sender, recipient))


def decrypt_share(key: bytes, round_id: int, sender: int, recipient: int, blob: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag

    if len(blob) != CIPHERTEXT_BYTES:
        raise SecAggError(f"a share ciphertext is {CIPHERTEXT_BYTES} bytes, got {len(blob)}")
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:12], blob[12:], _aad(round_id, sender, recipient))
    except InvalidTag as e:
        raise SecAggError(f"share from {sender} to {recipient} does not authenticate") from e


# --- Shamir secret sharing ---------------------------------------------------------------------

SHAMIR_PRIME = 2**521 - 1                # Mersenne prime M521: any 32-byte secret is a field element
_Y_BYTES = 66


def share_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """`count` shares (points x = 1..count) of a 32-byte secret, any `threshold` of which recover it.

    Hand-written over GF(M521) rather than `pycryptodome`'s Shamir (GF(2^128), a well-kept
    library): its field arithmetic is pure Python and each share costs a field
    inversion of ~254 multiplications, so recovering the 30 seeds of a 30-device round takes
    8.5 s and a 500-device round would take hours. Python's own big integers (C) with
    pow(x, -1, p) make the same Lagrange interpolation ~1000x faster. The code is the textbook
    scheme: a random polynomial of degree threshold-1 with the secret as constant term.
    """
    if len(secret) != 32:
        raise SecAggError("shared secrets are 32 bytes")
    if not 1 <= threshold <= count < 2**16:
        raise SecAggError(f"need 1 <= threshold ({threshold}) <= count ({count}) < 65536")
    coeffs = [int.from_bytes(secret, "little")] + [secrets.randbelow(SHAMIR_PRIME) for _ in range(threshold - 1)]
    out = []
    for x in range(1, count + 1):
        y = 0
        for c in reversed(coeffs):          # Horner
            y = (y * x + c) % SHAMIR_PRIME
        out.append(struct.pack("<H", x) + y.to_bytes(_Y_BYTES, "little"))
    return out


def recover_secret(shares: Sequence[bytes], threshold: int) -> bytes:
    """The secret from at least `threshold` shares (more are ignored): Lagrange at x = 0."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares, need {threshold}")
    pts = []
    for s in shares[:threshold]:
        if len(s) != SHARE_BYTES:
            raise SecAggError("malformed share")
        pts.append((struct.unpack("<H", s[:2])[0], int.from_bytes(s[2:], "little")))
    xs = [x for x, _ in pts]
    if len(set(xs)) != len(xs) or 0 in xs:
        raise SecAggError("shares must be at distinct non-zero points")
    p, acc = SHAMIR_PRIME, 0
    for j, (xj, yj) in enumerate(pts):
        num = den = 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % p
                den = den * (xm - xj) % p
        acc = (acc + yj * num * pow(den, -1, p)) % p
    if acc >= 2**256:
        raise SecAggError("shares do not interpolate to a 32-byte secret")
    return acc.to_bytes(32, "little")


# --- SecAgg+ neighbour graph -------------------------------------------------------------------

def _binom_tail(k: int, p: float, at_least: int) -> float:
    """P[Binomial(k, p) >= at_least], each term in logs: `comb(k, m) * p**m` overflowed a float past
    k of about 1,030 (a cohort of thousands at design dropout 0.45), and the error stopped the
    coordinator's maintenance."""
    if p <= 0:
        return 1.0 if at_least <= 0 else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    return math.fsum(math.exp(math.lgamma(k + 1) - math.lgamma(m + 1) - math.lgamma(k - m + 1)
                              + m * log_p + (k - m) * log_q) for m in range(max(at_least, 0), k + 1))


def graph_degree(n: int, dropout: float) -> tuple[int, int]:
    """(k neighbours, threshold t) for a cohort of n at design dropout rate `dropout`.

    t = k // 2 + 1 (a majority: a coordinator cannot collect both kinds of shares of one device
    from two disjoint halves of its neighbours). k is the smallest even degree such that
    n * P[Binomial(k, dropout) > k - t] <= 2^-20, or n - 1 (every other device) if smaller.
    That probability falls as k grows, so k is found by bisection: stepping through every even k
    costs O(n^2) terms, 5 s for a cohort of 10,000 at dropout 0.49, inside the round's lock
    (both give the same k for every cohort of 2 to 3,000 at dropouts 0 to 0.49). Never
    under `degree_floor(n)`: at a low design dropout the bound alone allows k = 2.
    """
    if n < 2:
        raise SecAggError("secure aggregation needs at least 2 devices")
    if not 0 <= dropout < 0.5:
        raise SecAggError("design dropout must be in [0, 0.5)")
    evens = range(2, n - 1, 2)   # the sparse graphs; past them, the complete one

    def enough(k: int) -> bool:
        return n * _binom_tail(k, dropout, k - (k // 2 + 1) + 1) <= 2.0**MAX_FAILURE_LOG2

    i = bisect.bisect_left(evens, True, key=enough)
    k = max(evens[i] if i < len(evens) else n - 1, degree_floor(n))
    return k, k // 2 + 1


def degree_floor(n: int) -> int:
    """The least degree a cohort of n may use: MIN_DEGREE (even, so a Harary graph), or every other
    device when the cohort is smaller."""
    return min(MIN_DEGREE, n - 1)


def neighbours(n: int, k: int, seed: bytes) -> list[list[int]]:
    """Harary graph H(k, n) over a seed-fixed permutation of indices 0..n-1: for each index the
    sorted indices of its k neighbours (k even, or n - 1 for the complete graph)."""
    if k >= n - 1:
        return [[j for j in range(n) if j != i] for i in range(n)]
    if k % 2:
        raise SecAggError("a sparse SecAgg+ graph has an even degree")
    order = list(range(n))
    random.Random(int.from_bytes(seed, "little")).shuffle(order)  # public, reproducible: not a secret
    pos = {dev: p for p, dev in enumerate(order)}
    out = []
    for i in range(n):
        p = pos[i]
        near = {order[(p + off) % n] for off in range(1, k // 2 + 1)} | {order[(p - off) % n]
                                                                         for off in range(1, k // 2 + 1)}
        out.append(sorted(near))
    return out


def unmask_sum(masked_sum: np.ndarray, self_seeds: Mapping[int, bytes],
               dropped_keys: Mapping[int, bytes], survivor_mask_pks: Mapping[int, bytes],
               graph: Sequence[Sequence[int]], round_id: int) -> np.ndarray:
    """Remove every mask from the sum of survivors' masked vectors (uint32, in place copy).

    self_seeds: survivor -> its recovered self-mask seed; dropped_keys: dropped device -> its
    recovered mask private key; survivor_mask_pks: survivor -> its mask public key.
    """
    acc = masked_sum.astype(np.uint32, copy=True)
    for seed in self_seeds.values():
        add_mask(acc, seed, -1)
    for j, sk in dropped_keys.items():
        for i in graph[j]:
            if i in survivor_mask_pks:       # survivor i added pair_sign(i, j) * PRG(s_ij)
                add_mask(acc, agree(sk, survivor_mask_pks[i], b"mask", round_id, i, j), -pair_sign(i, j))
    return acc
