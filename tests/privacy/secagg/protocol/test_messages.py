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


def test_advertise_roundtrip_and_replay():
    from ai4hi_sdk.privacy.secagg.protocol.messages import AdvertiseKeys

    msg = AdvertiseKeys("j", 3, "a", bytes(range(32)), bytes(32), b"CERT", b"SIG")
    assert AdvertiseKeys.decode(msg.encode(), "j", 3) == msg
    for job, rnd in [("other-job", 3), ("j", 4)]:
        with pytest.raises(ProtocolError, match="replay"):
            AdvertiseKeys.decode(msg.encode(), job, rnd)
    short = AdvertiseKeys("j", 3, "a", bytes(31), bytes(32), b"CERT", b"SIG")
    with pytest.raises(ProtocolError, match="32-byte"):
        AdvertiseKeys.decode(short.encode(), "j", 3)
    # the signature covers every field but itself
    assert msg.signed_bytes() != AdvertiseKeys("j", 3, "a", bytes(range(32)), bytes(32), b"CERT2").signed_bytes()
