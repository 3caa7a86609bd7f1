import json

from ai4hi_sdk.audit.hash_chain import GENESIS, HashChainLog, entry_hash, verify_chain


def _write_three(path):
    log = HashChainLog(path)
    for i in range(3):
        log.append({"round": i, "sha256": f"{i:064x}", "shape": (2, 3)})
    return log


def test_append_and_verify(tmp_path):
    log = _write_three(tmp_path / "log.jsonl")
    check = verify_chain(log.path)
    assert check.ok and check.entries == 3
    assert [r["round"] for r in log.records()] == [0, 1, 2]
    assert log.records()[0]["shape"] == [2, 3]  # tuples normalised so the hash re-computes


def test_edited_line_is_named(tmp_path):
    path = tmp_path / "log.jsonl"
    _write_three(path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["record"]["round"] = 7
    lines[1] = json.dumps(entry)
    path.write_text("\n".join(lines) + "\n")
    check = verify_chain(path)
    assert not check.ok and check.bad_line == 2 and "edited" in check.reason


def test_removed_line_breaks_the_link(tmp_path):
    path = tmp_path / "log.jsonl"
    _write_three(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    check = verify_chain(path)
    assert not check.ok and check.bad_line == 2


def test_garbage_line_is_reported(tmp_path):
    path = tmp_path / "log.jsonl"
    _write_three(path)
    with open(path, "a") as handle:
        handle.write("not json\n")
    check = verify_chain(path)
    assert not check.ok and check.bad_line == 4 and check.entries == 3


def test_missing_file_is_an_empty_chain(tmp_path):
    assert verify_chain(tmp_path / "absent.jsonl").ok


# ------------------------------------------------------------------ one test per check of the chain
# Each test below is written so that removing one check from verify_chain/entry_hash makes it fail
# (checked by applying each mutation by hand): the sequence check, the previous-hash check, and
# `prev` in the hash input. A forger without a key can always recompute hashes; these tests play
# one who recomputes exactly what the removed check would otherwise catch.


def _forge(path, entries):
    """Write entries ``(seq, prev, record)`` with correct hashes over exactly those fields."""
    lines = []
    for seq, prev, record in entries:
        lines.append(json.dumps({"seq": seq, "prev": prev, "record": record, "hash": entry_hash(seq, prev, record)}))
    path.write_text("\n".join(lines) + "\n")


def test_sequence_numbers_must_count_up(tmp_path):
    # links and hashes all consistent, but entry 2 repeats sequence number 1 (a replayed entry)
    path = tmp_path / "log.jsonl"
    r0, r1, r2 = {"round": 0}, {"round": 1}, {"round": 1}
    h0 = entry_hash(0, GENESIS, r0)
    h1 = entry_hash(1, h0, r1)
    _forge(path, [(0, GENESIS, r0), (1, h0, r1), (1, h1, r2)])
    check = verify_chain(path)
    assert not check.ok and check.bad_line == 3 and "sequence number 1, expected 2" in check.reason


def test_previous_hash_link_must_match(tmp_path):
    # the middle entry deleted, the next one renumbered and re-hashed, but its link left pointing
    # at the deleted entry: only the previous-hash check sees it
    path = tmp_path / "log.jsonl"
    _write_three(path)
    first, _, third = [json.loads(line) for line in path.read_text().splitlines()]
    _forge(path, [(0, first["prev"], first["record"]), (1, third["prev"], third["record"])])
    check = verify_chain(path)
    assert not check.ok and check.bad_line == 2 and "previous-hash link" in check.reason


def test_hash_covers_the_previous_hash(tmp_path):
    record = {"round": 0}
    assert entry_hash(0, GENESIS, record) != entry_hash(0, "1" * 64, record)
    # so the head commits to the whole history: editing entry 1 and patching entry 2's link
    # (keeping entry 2's hash, and so the head an anchor recorded) breaks entry 2
    path = tmp_path / "log.jsonl"
    _write_three(path)
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    head = entries[-1]["hash"]
    entries[0]["record"]["round"] = 99
    entries[0]["hash"] = entry_hash(0, GENESIS, entries[0]["record"])
    entries[1]["prev"] = entries[0]["hash"]
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    check = verify_chain(path)
    assert not check.ok and check.bad_line == 2 and "edited" in check.reason
    assert entries[-1]["hash"] == head


def test_head_and_tail_name_the_last_entry(tmp_path):
    log = _write_three(tmp_path / "log.jsonl")
    last = json.loads(log.path.read_text().splitlines()[-1])
    assert verify_chain(log.path).head == last["hash"] and log.tail() == (3, last["hash"])
    assert verify_chain(tmp_path / "absent.jsonl").head == GENESIS
    entry = log.append_linked(lambda seq, prev: {"seq_seen": seq, "prev_seen": prev})
    assert entry["record"] == {"seq_seen": 3, "prev_seen": last["hash"]} and verify_chain(log.path).ok
