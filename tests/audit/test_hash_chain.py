import json

from ai4hi_sdk.audit.hash_chain import HashChainLog, verify_chain


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
