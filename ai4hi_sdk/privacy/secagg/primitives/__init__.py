"""Pure cryptographic primitives of secure aggregation (no NVFlare, no pickle).

* :mod:`.keys` -- X25519 key pairs and shared secrets (raw 32-byte encodings).
* :mod:`.kdf` -- HKDF-SHA256 seeds bound to job, round, pair and purpose.
* :mod:`.keystream` -- AES-CTR / ChaCha20 keystream written into preallocated uint32 buffers.
* :mod:`.masking` -- pairwise + self masks mod 2**32, server-side unmasking.
* :mod:`.quantize` -- fixed point in Z_2^32, stochastic rounding, overflow guard, error bound.
* :mod:`.shamir` -- t-of-n Shamir sharing over GF(2**521 - 1).
* :mod:`.encoding` -- canonical, strict, non-pickle wire encoding (+ fixed-length shares).

The package re-exports the main names. Note that ``primitives.quantize`` is the *function*
:func:`.quantize.quantize`; import module-level names with
``from ai4hi_sdk.privacy.secagg.primitives.quantize import QuantizationConfig`` (or from here).
"""

from .encoding import (
    Array,
    Bytes,
    ListOf,
    MapOf,
    WireFormatError,
    decode_message,
    decode_share,
    encode_message,
    encode_share,
)
from .kdf import derive_pair_seed, derive_self_seed, hkdf_sha256
from .keys import (
    KeyAgreementError,
    KeyPair,
    generate_keypair,
    private_key_bytes,
    private_key_from_bytes,
    public_key_bytes,
    public_key_from_bytes,
    public_key_of,
    shared_secret,
)
from .keystream import CIPHERS, DEFAULT_CIPHER, Keystream, fill_uint32
from .masking import (
    add_mask,
    apply_masks,
    apply_pairwise_masks,
    pair_sign,
    remove_dropped_pair_masks,
    remove_self_masks,
    unmask_aggregate,
)
from .quantize import (
    OverflowRiskError,
    QuantizationConfig,
    VectorLayout,
    check_no_overflow,
    dequantize_mean,
    dequantize_sum,
    dequantize_weighted_mean,
    encode_counts,
    decode_count_sums,
    error_bound,
    quantize,
    weight_multiplier,
    weighted_error_bound,
)
from .shamir import ShamirError, Share, combine, split

__all__ = [
    "Array", "Bytes", "ListOf", "MapOf", "WireFormatError", "decode_message", "decode_share",
    "encode_message", "encode_share",
    "derive_pair_seed", "derive_self_seed", "hkdf_sha256",
    "KeyAgreementError", "KeyPair", "generate_keypair", "private_key_bytes", "private_key_from_bytes",
    "public_key_bytes", "public_key_from_bytes", "public_key_of", "shared_secret",
    "CIPHERS", "DEFAULT_CIPHER", "Keystream", "fill_uint32",
    "add_mask", "apply_masks", "apply_pairwise_masks", "pair_sign", "remove_dropped_pair_masks",
    "remove_self_masks", "unmask_aggregate",
    "OverflowRiskError", "QuantizationConfig", "VectorLayout", "check_no_overflow", "dequantize_mean",
    "dequantize_sum", "dequantize_weighted_mean", "encode_counts", "decode_count_sums", "error_bound",
    "quantize", "weight_multiplier", "weighted_error_bound",
    "ShamirError", "Share", "combine", "split",
]
