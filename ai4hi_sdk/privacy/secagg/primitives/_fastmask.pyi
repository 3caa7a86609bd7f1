# Type stub of the compiled extension built from _fastmask.c (see masking.py).
import numpy as np

def apply(vector: np.ndarray, keys: bytes, counters: bytes, signs: bytes, impl: str = ..., /) -> None:
    """vector (uint32, C-contiguous) += sum(sign * AES-128-CTR keystream), in place; keys and
    counters: 16 bytes per term; signs: 1 byte per term (1 = add, 0 = subtract)."""

def features() -> dict[str, bool]:
    """Which fused paths this CPU supports: {"aesni": bool, "vaes512": bool}."""
