import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.protocol.messages import (
    MaskedInput, ProtocolError, open_share, seal_share)


def test_masked_input_roundtrip_and_replay():
    v = np.arange(5, dtype=np.uint32)
    b = MaskedInput("job", 2, "a", v).encode()
    assert np.array_equal(MaskedInput.decode(b, "job", 2, 5).vector, v)
    for args in [("job", 3, 5), ("other", 2, 5), ("job", 2, 6)]:
        with pytest.raises(ProtocolError):
            MaskedInput.decode(b, *args)
    with pytest.raises(ProtocolError):
        MaskedInput.decode(MaskedInput("job", 2, "a", v.astype(np.int64)).encode(), "job", 2, 5)


def test_share_sealing_binds_context():
    s = bytes(32)
    c = seal_share(b"x", s, job_id="j", round_index=1, sender="a", receiver="b")
    assert open_share(c, s, job_id="j", round_index=1, sender="a", receiver="b") == b"x"
    with pytest.raises(ProtocolError):
        open_share(c, s, job_id="j", round_index=2, sender="a", receiver="b")


def test_advertise_signature_verified_and_tamper_rejected():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from ai4hi_sdk.privacy.secagg.protocol.messages import AdvertiseKeys, advertise_payload

    sk = Ed25519PrivateKey.generate()
    pub = {"a": sk.public_key()}

    def verify(site, data, sig):
        try:
            pub[site].verify(sig, data)
            return True
        except Exception:
            return False

    pk = bytes(range(32))
    msg = AdvertiseKeys("j", "a", pk, sk.sign(advertise_payload("j", "a", pk)))
    got = AdvertiseKeys.decode(msg.encode(), "j")
    assert got.verified(verify)
    bad = AdvertiseKeys("j", "a", bytes(32), got.signature)
    assert not bad.verified(verify)
    with pytest.raises(ProtocolError):
        AdvertiseKeys.decode(msg.encode(), "other-job")
