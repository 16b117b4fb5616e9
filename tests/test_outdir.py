"""An output folder is owned by one job and only written when it is cmidd's (``cmidd.outdir``), on real folders
and real OS locks (a second lock on the same file, as another process's would be)."""

from __future__ import annotations

import pytest
from filelock import FileLock, Timeout

from cmidd.errors import ConfigError
from cmidd.outdir import LOCK, MARKER, is_ours, owned


def test_a_new_folder_is_created_marked_and_locked(tmp_path):
    out = tmp_path / "a" / "job"
    with owned(out) as folder:
        assert folder == out and (out / MARKER).is_file()
        (out / "result.json").write_text("{}")
        with pytest.raises(Timeout):  # held for the job: another process's lock fails
            FileLock(out / LOCK, timeout=0).acquire()
    other = FileLock(out / LOCK, timeout=0)
    other.acquire()  # released when the job ended
    other.release()
    with owned(out):  # cmidd's folder (marked) is written again
        pass


def test_a_second_holder_is_refused_and_claims_nest(tmp_path):
    out = tmp_path / "job"
    with owned(out):
        with owned(out):  # this process already holds it (tracked_run, then run_job inside it)
            (out / "x").write_text("1")
        assert (out / "x").is_file()
    held = FileLock(out / LOCK, timeout=0)
    held.acquire()  # another job holds it
    try:
        with pytest.raises(ConfigError, match="in use by another cmidd job"):
            with owned(out):
                pytest.fail("entered a held folder")  # pragma: no cover
    finally:
        held.release()


def test_a_users_folder_is_refused_and_untouched(tmp_path):
    mine = tmp_path / "mine"
    (mine / "synthetic").mkdir(parents=True)
    (mine / "synthetic" / "notes.txt").write_text("mine")
    assert not is_ours(mine)
    with pytest.raises(ConfigError, match=rf"output.dir: .*mine holds files cmidd did not write .*{MARKER}"):
        with owned(mine):
            pytest.fail("entered a user's folder")  # pragma: no cover
    assert sorted(p.name for p in mine.rglob("*")) == ["notes.txt", "synthetic"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_ours(empty)  # nothing in it can be lost


def test_a_folder_the_job_never_wrote_into_is_removed_again(tmp_path):
    out = tmp_path / "late"
    with pytest.raises(ConfigError, match="found late"):
        with owned(out):
            raise ConfigError("bad input found late")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with owned(existing):
        pass
    assert existing.is_dir() and (existing / MARKER).is_file()  # a folder it did not create stays (marked)
