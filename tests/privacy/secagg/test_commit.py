"""Hash commitment to the self-mask secret."""
import pytest

from ai4hi_sdk.privacy.secagg.primitives.commit import commit_self_secret, matches_commitment


def test_commitment_binds_secret_job_round_and_site():
    b = bytes(range(32))
    c = commit_self_secret(b, job_id="j", round_index=3, site="a")
    assert len(c) == 32 and matches_commitment(b, c, job_id="j", round_index=3, site="a")
    others = [commit_self_secret(bytes([1]) + b[1:], job_id="j", round_index=3, site="a"),
              commit_self_secret(b, job_id="k", round_index=3, site="a"),
              commit_self_secret(b, job_id="j", round_index=4, site="a"),
              commit_self_secret(b, job_id="j", round_index=3, site="b")]
    assert c not in others and len(set(others)) == 4
    assert not matches_commitment(b, c, job_id="j", round_index=3, site="b")
    assert not matches_commitment(b"short", c, job_id="j", round_index=3, site="a")
    with pytest.raises(ValueError):
        commit_self_secret(b"x" * 8, job_id="j", round_index=0, site="a")
