"""Pairwise and self masks on uint32 vectors, arithmetic mod 2**32, in place.

Sign convention (both ends of a pair derive the same seed ``s_ab``, :func:`.kdf.derive_pair_seed`):
site ``a`` **adds** ``PRG(s_ab)`` when ``a < b`` (Python string order of the site names) and
**subtracts** it when ``a > b`` (:func:`pair_sign`). Each site also adds its own self mask
``PRG(b_a)``. So, over a set of sites that all sent their vectors::

    sum_a masked_a  ==  sum_a x_a + sum_a PRG(b_a)            (mod 2**32)

because every pair mask enters once with ``+`` and once with ``-``. The server then

* subtracts the self masks of the survivors (seeds reconstructed from Shamir shares):
  :func:`remove_self_masks`;
* for each site ``d`` that dropped after the others masked with it, cancels the pair masks the
  survivors added for ``d`` -- survivor ``u`` added ``pair_sign(u, d) * PRG(s_ud)``, so the server
  adds ``-pair_sign(u, d) * PRG(s_ud)`` -- using ``s_ud`` recomputed from ``d``'s reconstructed
  private key and ``u``'s public key: :func:`remove_dropped_pair_masks`.

:func:`unmask_aggregate` does both in one pass.

Performance. With the default AES-128-CTR and the optional compiled extension ``_fastmask``
(built from ``_fastmask.c`` by ``pip install``; needs only gcc/clang and Python's headers) every
mask is made by the CPU's AES instructions and added to the vector in registers, in one pass over
the vector for all masks: the keystream never goes to memory. Measured (``benchmarks/secagg_primitives.py``,
one core of the development machine, AMD EPYC with AES-NI, VAES and AVX-512): ~1.2x the rate at
which ``cryptography`` writes the same keystream into a cache-resident buffer with the AES-NI path,
~2.5x with the VAES path. Masks are bit-for-bit those of the pure path (tested).

Without the extension (another cipher, another CPU, or ``set_masking_impl("numpy")``) the pure path
walks the vector in cache-sized chunks and, for each chunk, applies every mask before moving on, so
a chunk is read from and written to memory once however many neighbours there are; per neighbour
the cost is one keystream chunk (``cryptography``'s ``update_into`` into a reused scratch) and one
in-cache ``np.add``/``np.subtract`` (numpy uint32 arithmetic wraps mod 2**32). That add (~0.1 ns
per element even in L1, plus ~0.3 us per call) is what holds this path to 0.8-0.88x of the
keystream rate on a core with VAES, where AES is fast (benchmarks/README.md); chunks of 8-64 Ki
elements, positional ufunc arguments and feeding the vector to AES as its input were measured and
did not get it to 0.9x.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .keystream import _ZEROS_VIEW, CHUNK_BYTES, DEFAULT_CIPHER, ZERO_NONCE, Keystream, _check_seed_nonce

try:  # optional compiled extension (fused AES-128-CTR masking); the pure path below is the fallback
    from . import _fastmask
except ImportError:  # pragma: no cover - not built here
    _fastmask = None  # type: ignore[assignment]  # the pure numpy path below

__all__ = [
    "MASK_CHUNK",
    "pair_sign",
    "apply_masks",
    "add_mask",
    "apply_pairwise_masks",
    "remove_self_masks",
    "remove_dropped_pair_masks",
    "unmask_aggregate",
    "new_scratch",
    "masking_impl",
    "set_masking_impl",
]

_IMPLS = ("auto", "aesni", "vaes512", "numpy")
_impl = "auto"


def set_masking_impl(name: str) -> str:
    """Choose how AES-128-CTR masks are applied: ``"auto"`` (the fastest the CPU supports),
    ``"aesni"``, ``"vaes512"`` (the compiled extension's paths; an error if unsupported) or
    ``"numpy"`` (pure path). Returns the previous choice. For tests and benchmarks."""
    global _impl
    if name not in _IMPLS:
        raise ValueError(f"masking impl must be one of {', '.join(_IMPLS)}, got {name!r}")
    previous, _impl = _impl, name
    return previous


def masking_impl(cipher: str = DEFAULT_CIPHER) -> str:
    """The path :func:`apply_masks` takes for ``cipher`` here: ``"vaes512"``, ``"aesni"`` or ``"numpy"``."""
    if cipher != "aes-128-ctr" or _fastmask is None or _impl == "numpy" or sys.byteorder != "little":
        return "numpy"
    if _impl != "auto":
        return _impl
    features = _fastmask.features()
    return "vaes512" if features["vaes512"] else "aesni" if features["aesni"] else "numpy"

#: Elements per chunk: 32 Ki uint32 = 128 KiB of keystream, plus the same of vector, stay in L2.
MASK_CHUNK = 32 * 1024


def new_scratch(chunk: int = MASK_CHUNK) -> np.ndarray:
    """A scratch buffer for the masking functions (reuse it across calls to avoid even that
    one allocation per call)."""
    return np.empty(chunk, dtype=np.uint32)


def pair_sign(me: str, other: str) -> int:
    """``+1`` if ``me`` adds the pair mask shared with ``other``, ``-1`` if it subtracts it."""
    if me == other:
        raise ValueError(f"a site cannot share a pair mask with itself ({me!r})")
    return 1 if me < other else -1


def _check_vector(vector: np.ndarray) -> None:
    if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32:
        raise TypeError(f"masked vectors must be numpy uint32 arrays, got {getattr(vector, 'dtype', type(vector))}")
    if vector.ndim != 1 or not vector.flags.c_contiguous or not vector.flags.writeable:
        raise ValueError("masked vectors must be 1-D, C-contiguous and writeable")


def _check_scratch(scratch: np.ndarray | None) -> np.ndarray:
    if scratch is None:
        return new_scratch()
    if (
        not isinstance(scratch, np.ndarray)
        or scratch.dtype != np.uint32
        or scratch.ndim != 1
        or not scratch.flags.c_contiguous
        or not scratch.flags.writeable
        or scratch.size == 0
    ):
        raise ValueError("scratch must be a non-empty, writeable, C-contiguous 1-D uint32 array")
    return scratch


def apply_masks(
    vector: np.ndarray,
    signed_seeds: Iterable[tuple[bytes, int]],
    *,
    scratch: np.ndarray | None = None,
    nonce: bytes = ZERO_NONCE,
    cipher: str = DEFAULT_CIPHER,
) -> np.ndarray:
    """In place: ``vector += sum(sign * PRG(seed))`` mod 2**32 over ``(seed, sign)`` pairs.

    ``sign`` is ``+1`` or ``-1``. This is the engine behind every other function here. Returns
    ``vector``.
    """
    _check_vector(vector)
    scratch = _check_scratch(scratch)
    terms = list(signed_seeds)
    for seed, sign in terms:
        if sign not in (1, -1):
            raise ValueError(f"mask sign must be +1 or -1, got {sign!r}")
        _check_seed_nonce(seed, nonce, cipher)
    if not terms or vector.size == 0:
        return vector
    impl = masking_impl(cipher)
    if impl != "numpy":
        # same keystream as Keystream(seed, nonce) for aes-128-ctr: key seed[:16], counter seed[16:] ^ nonce
        keys = b"".join(bytes(seed[:16]) for seed, _ in terms)
        counters = b"".join(bytes(a ^ b for a, b in zip(bytes(seed[16:]), bytes(nonce))) for seed, _ in terms)
        _fastmask.apply(vector, keys, counters, bytes(1 if sign > 0 else 0 for _, sign in terms), impl)
        return vector
    streams = [(Keystream(seed, nonce=nonce, cipher=cipher), sign) for seed, sign in terms]
    if scratch.size * 4 > CHUNK_BYTES:
        scratch = scratch[: CHUNK_BYTES // 4]
    chunk = scratch.size
    n_total = vector.size
    if not all(stream._hot_path_ok(4 * n_total) for stream, _ in streams):  # pragma: no cover
        return _apply_masks_checked(vector, streams, scratch)
    # hot loop: call the encryptors' update_into and the ufuncs directly, nothing else per chunk
    fills = [(stream._enc.update_into, np.add if sign > 0 else np.subtract) for stream, sign in streams]
    full_view = scratch.data.cast("B")
    full_zeros = _ZEROS_VIEW[: 4 * chunk]
    for off in range(0, n_total, chunk):
        n = min(chunk, n_total - off)
        v = vector[off : off + n]
        if n == chunk:
            ks, ks_view, zeros = scratch, full_view, full_zeros
        else:
            ks, ks_view, zeros = scratch[:n], full_view[: 4 * n], _ZEROS_VIEW[: 4 * n]
        for update_into, op in fills:
            update_into(zeros, ks_view)
            op(v, ks, out=v)
    return vector


def _apply_masks_checked(vector, streams, scratch):  # pragma: no cover - old cryptography / big-endian
    chunk = scratch.size
    full_view = memoryview(scratch).cast("B")
    for off in range(0, vector.size, chunk):
        n = min(chunk, vector.size - off)
        v = vector[off : off + n]
        ks, ks_view = scratch[:n], full_view[: 4 * n]
        for stream, sign in streams:
            stream._raw_fill_uint32(ks, ks_view)
            (np.add if sign > 0 else np.subtract)(v, ks, out=v)
    return vector


def add_mask(
    vector: np.ndarray,
    seed: bytes,
    sign: int = 1,
    scratch: np.ndarray | None = None,
    *,
    nonce: bytes = ZERO_NONCE,
    cipher: str = DEFAULT_CIPHER,
) -> np.ndarray:
    """In place: ``vector += sign * PRG(seed)`` mod 2**32 (``sign`` is ``+1`` or ``-1``)."""
    return apply_masks(vector, [(seed, sign)], scratch=scratch, nonce=nonce, cipher=cipher)


def _pair_terms(me: str, seeds: Mapping[str, bytes], flip: bool) -> list[tuple[bytes, int]]:
    terms = []
    for other in sorted(seeds):
        s = pair_sign(me, other)
        terms.append((seeds[other], -s if flip else s))
    return terms


def apply_pairwise_masks(
    vector: np.ndarray,
    my_name: str,
    neighbour_seeds: Mapping[str, bytes],
    self_seed: bytes | None,
    *,
    scratch: np.ndarray | None = None,
    nonce: bytes = ZERO_NONCE,
    cipher: str = DEFAULT_CIPHER,
) -> np.ndarray:
    """Site side, in place: add the self mask and, for each neighbour ``b``,
    ``pair_sign(my_name, b) * PRG(neighbour_seeds[b])``. Returns ``vector``.

    ``self_seed=None`` omits the self mask (only for tests and analysis: without it a server that
    learns the pair seeds of a dropped-then-late site could unmask it).
    """
    terms = _pair_terms(my_name, neighbour_seeds, flip=False)
    if self_seed is not None:
        terms.insert(0, (self_seed, 1))
    return apply_masks(vector, terms, scratch=scratch, nonce=nonce, cipher=cipher)


def remove_self_masks(
    aggregate: np.ndarray,
    self_seeds: Iterable[bytes],
    *,
    scratch: np.ndarray | None = None,
    nonce: bytes = ZERO_NONCE,
    cipher: str = DEFAULT_CIPHER,
) -> np.ndarray:
    """Server side, in place: subtract the self masks of the surviving sites."""
    return apply_masks(aggregate, [(s, -1) for s in self_seeds], scratch=scratch, nonce=nonce, cipher=cipher)


def remove_dropped_pair_masks(
    aggregate: np.ndarray,
    dropped: str,
    survivor_seeds: Mapping[str, bytes],
    *,
    scratch: np.ndarray | None = None,
    nonce: bytes = ZERO_NONCE,
    cipher: str = DEFAULT_CIPHER,
) -> np.ndarray:
    """Server side, in place: cancel the pair masks that surviving neighbours added for ``dropped``.

    ``survivor_seeds`` maps each surviving neighbour ``u`` of ``dropped`` (that sent a masked
    vector) to the pair seed ``s_{u,dropped}``. Survivor ``u`` added ``pair_sign(u, dropped) *
    PRG(s)``, i.e. ``-pair_sign(dropped, u) * PRG(s)``, so we add ``pair_sign(dropped, u) *
    PRG(s)`` -- exactly the mask ``dropped`` itself would have added.
    """
    return apply_masks(
        aggregate, _pair_terms(dropped, survivor_seeds, flip=False), scratch=scratch, nonce=nonce, cipher=cipher
    )


def unmask_aggregate(
    aggregate: np.ndarray,
    *,
    survivor_self_seeds: Mapping[str, bytes] | Sequence[bytes],
    dropped_pair_seeds: Mapping[str, Mapping[str, bytes]] | None = None,
    scratch: np.ndarray | None = None,
    nonce: bytes = ZERO_NONCE,
    cipher: str = DEFAULT_CIPHER,
) -> np.ndarray:
    """Server side, in place and in one pass: subtract the survivors' self masks and cancel the
    dropped sites' pair masks.

    Args:
        aggregate: sum mod 2**32 of the masked vectors that arrived.
        survivor_self_seeds: self seeds of the sites whose vectors are in ``aggregate`` (a mapping
            name -> seed, or just the seeds).
        dropped_pair_seeds: ``{dropped_site: {surviving_neighbour: pair_seed}}``.
    """
    seeds = survivor_self_seeds.values() if isinstance(survivor_self_seeds, Mapping) else survivor_self_seeds
    terms: list[tuple[bytes, int]] = [(s, -1) for s in seeds]
    for dropped in sorted(dropped_pair_seeds or {}):
        terms += _pair_terms(dropped, (dropped_pair_seeds or {})[dropped], flip=False)
    return apply_masks(aggregate, terms, scratch=scratch, nonce=nonce, cipher=cipher)
