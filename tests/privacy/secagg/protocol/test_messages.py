import numpy as np
import pytest

from ai4hi_sdk.privacy.secagg.protocol.messages import (
    ConsistencyRequest, ConsistencySignature, MaskedInput, ProtocolError, UnmaskRequest, open_share, seal_share)


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

    msg = AdvertiseKeys("j", 3, "a", bytes(range(32)), bytes(32), b"C" * 32, b"CERT", b"SIG")
    assert AdvertiseKeys.decode(msg.encode(), "j", 3) == msg
    for job, rnd in [("other-job", 3), ("j", 4)]:
        with pytest.raises(ProtocolError, match="replay"):
            AdvertiseKeys.decode(msg.encode(), job, rnd)
    for short in [AdvertiseKeys("j", 3, "a", bytes(31), bytes(32), b"C" * 32, b"CERT", b"SIG"),
                  AdvertiseKeys("j", 3, "a", bytes(32), bytes(32), b"C" * 31, b"CERT", b"SIG")]:
        with pytest.raises(ProtocolError, match="32 bytes"):
            AdvertiseKeys.decode(short.encode(), "j", 3)
    # the signature covers every field but itself: the certificate and the self-mask commitment too
    assert msg.signed_bytes() != AdvertiseKeys("j", 3, "a", bytes(range(32)), bytes(32), b"C" * 32,
                                               b"CERT2").signed_bytes()
    assert msg.signed_bytes() != AdvertiseKeys("j", 3, "a", bytes(range(32)), bytes(32), b"D" * 32,
                                               b"CERT").signed_bytes()


def test_masked_input_header_binds_the_vector_to_job_and_round():
    v = np.arange(6, dtype=np.uint32)
    msg = MaskedInput("job", 2, "a", v, ("b", "c"))
    back = MaskedInput.decode_parts(msg.header(), v, "job", 2, 6)
    assert back.site == "a" and back.masked_with == ("b", "c") and np.array_equal(back.vector, v)
    for args, match in [(("job", 1, 6), "replay"), (("other", 2, 6), "replay"), (("job", 2, 7), "length")]:
        with pytest.raises(ProtocolError, match=match):
            MaskedInput.decode_parts(msg.header(), v, *args)
    with pytest.raises(ProtocolError, match="header says length"):
        MaskedInput.decode_parts(MaskedInput("job", 2, "a", v[:5]).header(), v, "job", 2, 6)
    with pytest.raises(ProtocolError, match="uint32"):
        MaskedInput.decode_parts(msg.header(), v.astype(np.int64), "job", 2, 6)


def test_consistency_messages_roundtrip_and_bind_their_sets():
    req = ConsistencyRequest("j", 1, ("b", "a"), ("c",))
    assert ConsistencyRequest.decode(req.encode(), "j", 1).survivors == ("a", "b")  # canonical order
    with pytest.raises(ProtocolError, match="both a survivor and dropped"):
        ConsistencyRequest.decode(ConsistencyRequest("j", 1, ("a", "c"), ("c",)).encode(), "j", 1)
    sig = ConsistencySignature("j", 1, "a", ("a", "b"), ("c",), b"SIG")
    assert ConsistencySignature.decode(sig.encode(), "j", 1) == sig
    with pytest.raises(ProtocolError, match="replay"):
        ConsistencySignature.decode(sig.encode(), "j", 0)
    # what is signed names job, round, signer and both sets
    variants = [ConsistencySignature("k", 1, "a", ("a", "b"), ("c",)), ConsistencySignature("j", 2, "a", ("a", "b"), ("c",)),
                ConsistencySignature("j", 1, "b", ("a", "b"), ("c",)), ConsistencySignature("j", 1, "a", ("a", "b"), ()),
                ConsistencySignature("j", 1, "a", ("a", "b", "c"), ())]
    assert len({v.signed_bytes() for v in variants} | {sig.signed_bytes()}) == 6
    unmask = UnmaskRequest("j", 1, ("a", "b"), ("c",), (sig.encode(),))
    assert UnmaskRequest.decode(unmask.encode(), "j", 1) == unmask
