"""sha256_file equals hashlib over the whole file, across the chunk boundary."""

from __future__ import annotations

import hashlib

import pytest

from ai4hi_sdk.audit.file_digest import sha256_file


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17])
def test_equals_hashlib_of_the_whole_file(tmp_path, size):
    data = bytes((i * 31 + 7) % 251 for i in range(size))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "absent")
