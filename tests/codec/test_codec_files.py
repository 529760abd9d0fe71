"""codec.data.files: the codec's outputs are written all or nothing, with the permissions of any new file."""

import os
import stat

import pytest

from codec.data.files import write_atomically


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    """The file is created through a temporary one and a rename: it must get the permissions the
    umask gives a new file (a temporary file of tempfile.mkstemp is 0600, which the rename kept)."""
    previous = os.umask(umask)
    try:
        write_atomically(tmp_path / "sub" / "out.dfcx", b"data")
    finally:
        os.umask(previous)
    path = tmp_path / "sub" / "out.dfcx"
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_rewrite_replaces_the_file_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "out.png"
    write_atomically(path, b"first")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_failed_write_leaves_neither_file(tmp_path):
    path = tmp_path / "out.png"
    with pytest.raises(TypeError):
        write_atomically(path, "not bytes")
    assert list(tmp_path.iterdir()) == []
