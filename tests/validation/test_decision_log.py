"""The signed decision log (format 2): what each signature covers, format-1 logs read as weak,
anchors, and where the verifier's key may come from."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ai4hi_sdk.audit.hash_chain import GENESIS, HashChainLog
from ai4hi_sdk.errors import UserError
from ai4hi_sdk.validation.decision import Evidence, decide
from ai4hi_sdk.validation.decision_log import (
    LOG_FORMAT,
    Anchor,
    DecisionLog,
    _canonical,
    anchor_from_file,
    claimed_signer,
    load_public_key,
    public_key_hex,
    signed_message,
    verify_log,
)
from ai4hi_sdk.validation.update_policy import UpdatePolicy

EVIDENCE = Evidence.model_validate({"sites": [{
    "site": "A", "n": 100, "candidate_auroc": 0.85, "champion_auroc": 0.8, "auroc_delta": 0.05,
    "auroc_delta_ci": [0.01, 0.09], "auroc_delta_variance": 0.0004}]})


def _write(path, key, n=3, job="j"):
    log = DecisionLog(path, key)
    return [log.append(decide(EVIDENCE, UpdatePolicy()), EVIDENCE, parent_model_sha256=None, job_id=f"{job}{i}")
            for i in range(n)]


def test_signature_covers_position_signer_and_body(tmp_path):
    key = Ed25519PrivateKey.generate()
    entries = _write(tmp_path / "d.jsonl", key)
    for entry in entries:
        record = entry["record"]
        assert record["format"] == LOG_FORMAT and record["signer"] == public_key_hex(key)
        sig = base64.b64decode(record["signature"])
        key.public_key().verify(sig, signed_message(entry["seq"], entry["prev"], record["signer"], record["body"]))
        # the same signature does not hold for another position or for the body alone
        for other in (signed_message(entry["seq"] + 1, entry["prev"], record["signer"], record["body"]),
                      signed_message(entry["seq"], GENESIS if entry["seq"] else "1" * 64, record["signer"],
                                     record["body"]),
                      _canonical(record["body"])):
            with pytest.raises(Exception):
                key.public_key().verify(sig, other)
    check = verify_log(tmp_path / "d.jsonl", key.public_key())
    assert check.ok and check.intact and check.entries == 3 and check.head == entries[-1]["hash"]
    assert check.log_format == 2 and not check.weak


def test_an_entry_moved_to_another_log_fails(tmp_path):
    # a genuinely signed entry copied from one log into another at the same position (same seq)
    key = Ed25519PrivateKey.generate()
    _write(tmp_path / "a.jsonl", key, 2, job="a")
    _write(tmp_path / "b.jsonl", key, 2, job="b")
    lines = (tmp_path / "b.jsonl").read_text().splitlines()
    second_of_a = (tmp_path / "a.jsonl").read_text().splitlines()[1]
    chain = HashChainLog(tmp_path / "c.jsonl")
    chain.append(json.loads(lines[0])["record"])
    chain.append(json.loads(second_of_a)["record"])
    check = verify_log(tmp_path / "c.jsonl", key.public_key())
    assert not check.ok and check.bad_line == 2


def test_anchors(tmp_path):
    key = Ed25519PrivateKey.generate()
    entries = _write(tmp_path / "d.jsonl", key, 3)
    path = tmp_path / "d.jsonl"
    ok = [Anchor(3, entries[2]["hash"]), Anchor(2, entries[1]["hash"]), Anchor(None, entries[0]["hash"]),
          Anchor(0, GENESIS), Anchor(3, None)]
    for anchor in ok:
        assert verify_log(path, key.public_key(), [anchor]).ok, anchor
    for anchor, words in ((Anchor(4, None), "truncated"), (Anchor(2, entries[2]["hash"]), "rewritten"),
                          (Anchor(None, "e" * 64), "entries removed")):
        check = verify_log(path, key.public_key(), [anchor])
        assert not check.ok and not check.intact and words in check.reason and check.bad_line is None


def test_anchor_from_a_card_file(tmp_path):
    card = tmp_path / "c1.json"
    card.write_text(json.dumps({"model": "c1", "decision_log": {"entries": 2, "head": "a" * 64}}))
    assert anchor_from_file(card) == Anchor(2, "a" * 64, str(card))
    card.write_text("{not json")
    with pytest.raises(UserError, match="not a JSON file"):
        anchor_from_file(card)


def test_public_key_sources(tmp_path):
    key = Ed25519PrivateKey.generate()
    hex_key = public_key_hex(key)
    pem = tmp_path / "keys" / "signer.pem"
    pem.parent.mkdir()
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    hex_file = tmp_path / "keys" / "signer.pub"
    hex_file.write_text(hex_key + "\n")
    log = tmp_path / "report" / "decisions.jsonl"
    for source in (hex_key, str(pem), str(hex_file)):
        assert public_key_hex(load_public_key(source, log=log)) == hex_key
    beside = tmp_path / "report" / "decisions.jsonl.pub"
    beside.parent.mkdir()
    beside.write_text(hex_key)
    with pytest.raises(UserError, match="not a trust anchor"):
        load_public_key(str(beside), log=log)
    (tmp_path / "report" / "sub").mkdir()
    (tmp_path / "report" / "sub" / "k.pub").write_text(hex_key)
    with pytest.raises(UserError, match="lies in the log's folder"):
        load_public_key(str(tmp_path / "report" / "sub" / "k.pub"), log=log)
    with pytest.raises(UserError, match="64 hex characters"):
        load_public_key("abc")


def test_format_1_is_intact_but_not_ok(tmp_path):
    key = Ed25519PrivateKey.generate()
    chain = HashChainLog(tmp_path / "old.jsonl")
    for i in range(2):
        body = {"decision": {"decision": "keep"}, "i": i}
        chain.append({"body": body, "signer": public_key_hex(key),
                      "signature": base64.b64encode(key.sign(_canonical(body))).decode()})
    check = verify_log(tmp_path / "old.jsonl", key.public_key())
    assert check.intact and not check.ok and check.weak and check.log_format == 1
    assert check.reason.startswith("format 1: weaker, signatures cover bodies only")
    # continued by the current code: still weak (its old part), reported as mixed
    _write(tmp_path / "old.jsonl", key, 1)
    check = verify_log(tmp_path / "old.jsonl", key.public_key())
    assert check.weak and check.format_1_entries == 2 and check.entries == 3 and check.log_format == "1 then 2"
    assert claimed_signer(tmp_path / "old.jsonl") == public_key_hex(key)
