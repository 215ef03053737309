"""The filesystem half of put/get: paths, roots, atomic uploads, downloads, tree entries."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rexec.server import transfer
from rexec.server.transfer import (
    Download,
    FileRoots,
    Parent,
    TransferError,
    Tree,
    Upload,
    check_absolute,
    check_link_target,
    check_relative,
    make_directory,
    make_symlink,
    open_parent,
    unchanged,
)

ANY = FileRoots(None)
# A tree entry as the session will pass it: ("dir", path, b""), ("file", path, data),
# ("link", path, target).
Entry = tuple[str, str, bytes | str]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(roots: FileRoots, path: Path | str, data: bytes, **kwargs: int | None) -> None:
    with open_parent(roots, str(path)) as parent, Upload(parent, size=len(data), **kwargs) as up:
        up.write(data)
        up.commit(sha(data))


def get(roots: FileRoots, path: Path | str, chunk: int = 7) -> tuple[bytes, str]:
    out = bytearray()
    buffer = bytearray(chunk)
    with Download.open(roots, str(path)) as down:
        while n := down.read_into(buffer):
            out += buffer[:n]
        return bytes(out), down.finish()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if ".rexec-tmp-" in p.name]


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with openat2, then with the component-by-component fallback."""
    if request.param == "walk":
        monkeypatch.setattr(transfer, "USE_OPENAT2", False)
    else:
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.close(transfer._openat2(fd, "tmp", os.O_RDONLY | os.O_DIRECTORY, 0x08))
        except OSError as exc:
            if exc.errno == errno.ENOSYS:
                pytest.skip("this kernel has no openat2")
            raise
        finally:
            os.close(fd)
    return str(request.param)


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[tuple[FileRoots, Path, Path]]:
    """A root with a sub-directory, and a secret outside it; links both ways."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "sub" / "inner").write_bytes(b"inner")
    (root / "out").symlink_to(outside)  # a directory link leading out
    (root / "secret-link").symlink_to(outside / "secret")  # a file link leading out
    (root / "in").symlink_to("sub")  # a directory link staying inside
    (root / "inner-link").symlink_to("sub/inner")  # a file link staying inside
    yield FileRoots((str(root),)), root, outside


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("/srv/app/x", "/srv/app/x"),
    ("//srv/./app//x", "/srv/app/x"),
    ("/", "/"),
])
def test_check_absolute_canonical(path: str, expected: str) -> None:
    assert check_absolute(path) == expected


@pytest.mark.parametrize(("path", "fragment"), [
    ("", "empty"),
    ("srv/app", "not absolute"),
    ("/srv/../etc/passwd", "'..'"),
    ("/srv/app/..", "'..'"),
    ("/srv/a\0b", "NUL"),
    ("/srv/\udcff\ud800", "not valid text"),
])
def test_check_absolute_refuses(path: str, fragment: str) -> None:
    with pytest.raises(TransferError, match=fragment) as info:
        check_absolute(path)
    assert info.value.code == "bad_path"


@pytest.mark.parametrize("path", ["", "/a", "a/", "a//b", "./a", "a/./b", "a/..", "../a", "a\0"])
def test_check_relative_refuses(path: str) -> None:
    with pytest.raises(TransferError) as info:
        check_relative(path)
    assert info.value.code == "bad_path"


@given(st.text(alphabet=st.sampled_from("ab./\0\\ é"), max_size=12) | st.text(max_size=30))
def test_check_relative_property(path: str) -> None:
    try:
        result = check_relative(path)
    except TransferError as exc:
        assert exc.code == "bad_path"
        return
    parts = result.split("/")
    assert result == path
    assert not result.startswith("/")
    assert "\0" not in result
    assert ".." not in parts
    assert "" not in parts


@pytest.mark.parametrize(("entry", "target"), [
    ("a/link", "../b"),  # up to the tree's top, no further
    ("a/b/link", "../../c/d"),
    ("link", "sub/file"),
    ("link", "./sub//file"),
])
def test_link_target_inside(entry: str, target: str) -> None:
    assert check_link_target(entry, target) == target


@pytest.mark.parametrize(("entry", "target", "fragment"), [
    ("link", "/etc/passwd", "absolute"),
    ("link", "../x", "leads outside"),
    ("a/link", "../../x", "leads outside"),
    ("a/link", "x/../..", "leads outside"),
    ("link", "x/..", "leads outside"),  # would escape if x were a link to '.'
])
def test_link_target_outside(entry: str, target: str, fragment: str) -> None:
    with pytest.raises(TransferError, match=fragment) as info:
        check_link_target(entry, target)
    assert info.value.code == "refused"


# -- roots ------------------------------------------------------------------------------------


def test_roots_are_canonical_and_checked() -> None:
    assert FileRoots(("/srv/app/", "//tmp")).paths == ("/srv/app", "/tmp")
    with pytest.raises(ValueError, match="not absolute"):
        FileRoots(("srv",))


def test_root_of_picks_the_longest_and_refuses_neighbours() -> None:
    roots = FileRoots(("/srv", "/srv/app"))
    assert roots.root_of("/srv/app/x") == "/srv/app"
    assert roots.root_of("/srv/app", strictly=True) == "/srv"
    with pytest.raises(TransferError, match="not beneath the allowed roots"):
        roots.root_of("/srv2/x")  # a prefix of the string, not a parent directory
    with pytest.raises(TransferError, match="not beneath"):
        FileRoots(("/srv",)).root_of("/srv", strictly=True)


@pytest.mark.parametrize(("path", "fragment"), [
    ("/etc/passwd", "not beneath"),
    ("relative/x", "not absolute"),
    ("/x/../etc", "'..'"),
    ("/x/a\0", "NUL"),
])
def test_put_outside_or_malformed_is_refused_before_opening(
        jail: tuple[FileRoots, Path, Path], path: str, fragment: str) -> None:
    roots, _, _ = jail
    for opener in (open_parent, Download.open, Tree.open):
        with pytest.raises(TransferError, match=fragment) as info:
            opener(roots, path)
        assert info.value.code in ("refused", "bad_path")
        assert "/x" in str(info.value) or "passwd" in str(info.value)


def test_put_through_a_middle_link_leading_out_is_refused(
        jail: tuple[FileRoots, Path, Path], resolver: str) -> None:
    roots, root, outside = jail
    with pytest.raises(TransferError) as info:
        put(roots, root / "out" / "new", b"x")
    assert info.value.code == "refused"
    assert str(root / "out" / "new") in str(info.value)
    assert not (outside / "new").exists()
    assert leftovers(outside) == []


def test_get_through_a_middle_link_leading_out_is_refused(
        jail: tuple[FileRoots, Path, Path], resolver: str) -> None:
    roots, root, _ = jail
    with pytest.raises(TransferError, match="refused") as info:
        get(roots, root / "out" / "secret")
    assert info.value.code == "refused"


def test_get_of_a_final_link_leading_out_is_refused(
        jail: tuple[FileRoots, Path, Path], resolver: str) -> None:
    roots, root, _ = jail
    with pytest.raises(TransferError) as info:
        get(roots, root / "secret-link")
    assert info.value.code == "refused"
    expected = "leads outside" if resolver == "openat2" else "symbolic link"
    assert expected in str(info.value)
    assert str(root / "secret-link") in str(info.value)


def test_links_staying_inside_work_with_openat2_only(
        jail: tuple[FileRoots, Path, Path], resolver: str) -> None:
    roots, root, _ = jail
    if resolver == "openat2":
        assert get(roots, root / "inner-link")[0] == b"inner"
        assert get(roots, root / "in" / "inner")[0] == b"inner"
        put(roots, root / "in" / "new", b"new")
        assert (root / "sub" / "new").read_bytes() == b"new"
    else:  # the fallback walk refuses every link, as documented
        for path in (root / "inner-link", root / "in" / "inner"):
            with pytest.raises(TransferError, match="symbolic link") as info:
                get(roots, path)
            assert info.value.code == "refused"


def test_plain_paths_under_roots_work(jail: tuple[FileRoots, Path, Path], resolver: str) -> None:
    roots, root, _ = jail
    put(roots, root / "sub" / "f", b"data")
    assert get(roots, root / "sub" / "f") == (b"data", sha(b"data"))


def test_make_dirs_stays_beneath_the_root(
        jail: tuple[FileRoots, Path, Path], resolver: str) -> None:
    roots, root, outside = jail
    with open_parent(roots, str(root / "a" / "b" / "f"), make_dirs=True) as parent:
        assert parent.name == "f"
    assert (root / "a" / "b").is_dir()
    with pytest.raises(TransferError) as info:
        open_parent(roots, str(root / "out" / "c" / "f"), make_dirs=True)
    assert info.value.code == "refused"
    assert not (outside / "c").exists()


def test_unrestricted_follows_links(jail: tuple[FileRoots, Path, Path]) -> None:
    _, root, outside = jail
    assert get(ANY, root / "out" / "secret")[0] == b"secret"
    put(ANY, root / "out" / "new", b"n")
    assert (outside / "new").read_bytes() == b"n"


def test_root_itself_is_not_a_file(jail: tuple[FileRoots, Path, Path]) -> None:
    roots, root, _ = jail
    with pytest.raises(TransferError) as info:
        open_parent(roots, str(root))
    assert info.value.code == "refused"
    with pytest.raises(TransferError) as info:
        Download.open(roots, str(root))
    assert info.value.code == "is_a_directory"


def test_missing_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="no such file") as info:
        Download.open(ANY, str(tmp_path / "nope"))
    assert info.value.code == "not_found"
    assert info.value.path == str(tmp_path / "nope")
    with pytest.raises(TransferError) as info:
        open_parent(ANY, str(tmp_path / "no" / "dir" / "f"))
    assert info.value.code == "not_found"


def test_not_a_directory_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(TransferError) as info:
        open_parent(ANY, str(tmp_path / "file" / "f"))
    assert info.value.code == "not_a_directory"


def test_permission_denied_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root EACCES cannot be provoked with modes: make the temp file's creation fail as it would.
    real_open = os.open

    def deny(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(TransferError, match="permission denied") as info:
        put(ANY, tmp_path / "f", b"x")
    assert info.value.code == "permission_denied"
    assert str(tmp_path / "f") in str(info.value)


# -- uploads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 17])
def test_upload_sizes(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    dest = tmp_path / "f"
    with open_parent(ANY, str(dest)) as parent, Upload(parent, size=size) as up:
        for i in range(0, size, 65536):
            up.write(memoryview(data)[i:i + 65536])
        up.commit(sha(data).upper())  # hex case does not matter
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == transfer.DEFAULT_MODE
    assert leftovers(tmp_path) == []


def test_upload_writes_into_a_hidden_temp_until_commit(tmp_path: Path) -> None:
    dest = tmp_path / "f"
    with open_parent(ANY, str(dest)) as parent, Upload(parent, size=2) as up:
        up.write(b"ab")
        (temp,) = leftovers(tmp_path)
        assert temp.startswith(".f.rexec-tmp-")
        assert stat.S_IMODE((tmp_path / temp).stat().st_mode) == 0o600
        assert not dest.exists()
        up.commit(sha(b"ab"))
    assert dest.read_bytes() == b"ab"
    assert leftovers(tmp_path) == []


def old_file(tmp_path: Path) -> Path:
    dest = tmp_path / "f"
    dest.write_bytes(b"old contents")
    dest.chmod(0o640)
    return dest


def test_wrong_checksum_leaves_the_old_file(tmp_path: Path) -> None:
    dest = old_file(tmp_path)
    with open_parent(ANY, str(dest)) as parent, Upload(parent, size=3) as up:
        up.write(b"new")
        with pytest.raises(TransferError, match="SHA-256") as info:
            up.commit(sha(b"NEW"))
        assert leftovers(tmp_path) == []  # commit aborted by itself, not only the with block
    assert info.value.code == "checksum_mismatch"
    assert dest.read_bytes() == b"old contents"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("announced", "sent"), [(5, b"new"), (2, b"new")])
def test_wrong_size_leaves_the_old_file(tmp_path: Path, announced: int, sent: bytes) -> None:
    dest = old_file(tmp_path)
    with (pytest.raises(TransferError) as info,  # from write (too many) or commit (too few)
          open_parent(ANY, str(dest)) as parent, Upload(parent, size=announced) as up):
        up.write(sent)
        up.commit(sha(sent))
    assert info.value.code == "size_mismatch"
    assert dest.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_abort_midway_leaves_the_old_file(tmp_path: Path) -> None:
    dest = old_file(tmp_path)

    class ClientGone(Exception):
        pass

    with (pytest.raises(ClientGone), open_parent(ANY, str(dest)) as parent,
          Upload(parent, size=10) as up):
        up.write(b"half")
        assert leftovers(tmp_path)
        raise ClientGone
    assert dest.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_leaving_without_commit_aborts(tmp_path: Path) -> None:
    with open_parent(ANY, str(tmp_path / "f")) as parent:
        with Upload(parent, size=1) as up:
            up.write(b"x")
        up.abort()  # idempotent
        with pytest.raises(TransferError, match="already ended"):
            up.write(b"y")
    assert os.listdir(tmp_path) == []


def test_no_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = old_file(tmp_path)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with open_parent(ANY, str(dest)) as parent, Upload(parent, size=3) as up:
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(TransferError, match="no space left") as info:
            up.write(b"new")
    assert info.value.code == "no_space"
    assert dest.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    data = b"0123456789"
    put(ANY, tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data


def test_max_size_refused_up_front(tmp_path: Path) -> None:
    with (open_parent(ANY, str(tmp_path / "f")) as parent,
          pytest.raises(TransferError, match="over the limit of 10 bytes") as info):
        Upload(parent, size=11, max_size=10)
    assert info.value.code == "too_large"
    assert os.listdir(tmp_path) == []


def test_max_size_enforced_before_writing_past_it(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    real_write = os.write

    def counting(fd: int, data: memoryview) -> int:
        written.append(len(data))
        return real_write(fd, data)

    with open_parent(ANY, str(tmp_path / "f")) as parent, Upload(parent, max_size=10) as up:
        monkeypatch.setattr(os, "write", counting)
        up.write(b"x" * 8)
        with pytest.raises(TransferError) as info:
            up.write(b"x" * 3)
    assert info.value.code == "too_large"
    assert written == [8]  # the three bytes that would pass the limit were never written
    assert os.listdir(tmp_path) == []


def test_mode_and_mtime_applied(tmp_path: Path) -> None:
    dest = tmp_path / "f"
    mtime_ns = 1_600_000_000_123_456_789
    put(ANY, dest, b"x", mode=0o751, mtime_ns=mtime_ns)
    st_ = dest.stat()
    assert stat.S_IMODE(st_.st_mode) == 0o751
    assert st_.st_mtime_ns == mtime_ns


def test_existing_mode_and_owner_kept_unless_given(tmp_path: Path) -> None:
    dest = old_file(tmp_path)
    os.chown(dest, 1234, 4321)
    put(ANY, dest, b"v2")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    if os.geteuid() == 0:
        assert (dest.stat().st_uid, dest.stat().st_gid) == (1234, 4321)
    put(ANY, dest, b"v3", mode=0o600)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_new_file_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        put(ANY, tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_bad_mode_refused(tmp_path: Path) -> None:
    with open_parent(ANY, str(tmp_path / "f")) as parent, pytest.raises(TransferError) as info:
        Upload(parent, size=0, mode=0o10000)
    assert info.value.code == "bad_mode"


def test_upload_onto_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with open_parent(ANY, str(tmp_path / "d")) as parent, pytest.raises(TransferError) as info:
        Upload(parent, size=0)
    assert info.value.code == "is_a_directory"
    assert leftovers(tmp_path) == []


def test_upload_replaces_a_final_link_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"target")
    (tmp_path / "link").symlink_to(target)
    put(ANY, tmp_path / "link", b"new")
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link").read_bytes() == b"new"
    assert target.read_bytes() == b"target"


def test_unchanged(tmp_path: Path) -> None:
    dest = old_file(tmp_path)
    data = b"old contents"
    with open_parent(ANY, str(dest)) as parent:
        assert unchanged(parent, size=len(data), sha256_hex=sha(data), mode=0o640)
        assert unchanged(parent, size=len(data), sha256_hex=sha(data))  # mode not asked
        assert not unchanged(parent, size=len(data), sha256_hex=sha(data), mode=0o644)
        assert not unchanged(parent, size=len(data), sha256_hex=sha(b"old contentz"))
        assert not unchanged(parent, size=len(data) + 1, sha256_hex=sha(data))
    with open_parent(ANY, str(tmp_path / "missing")) as parent:
        assert not unchanged(parent, size=0, sha256_hex=sha(b""))
    (tmp_path / "link").symlink_to(dest)
    with open_parent(ANY, str(tmp_path / "link")) as parent:
        assert not unchanged(parent, size=len(data), sha256_hex=sha(data))


# -- downloads --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2 * 1024 * 1024 + 3])
def test_download(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "f"
    src.write_bytes(data)
    src.chmod(0o604)
    os.utime(src, ns=(0, 1_500_000_000_000_000_001))
    with Download.open(ANY, str(src)) as down:
        assert (down.size, down.mode, down.mtime_ns) == (size, 0o604, 1_500_000_000_000_000_001)
    assert get(ANY, src, chunk=65536) == (data, sha(data))


def test_download_of_a_growing_file(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"a" * 100)
    buffer = bytearray(64)
    with Download.open(ANY, str(src)) as down:
        assert down.read_into(buffer) == 64
        with src.open("ab") as f:
            f.write(b"more")
        total = 64
        while n := down.read_into(buffer):
            total += n
        assert total == 100  # never more than was announced
        with pytest.raises(TransferError, match="changed while it was read") as info:
            down.finish()
    assert info.value.code == "changed_while_reading"


def test_download_of_a_shrinking_file(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"a" * 100)
    with Download.open(ANY, str(src)) as down:
        os.truncate(src, 10)
        while down.read_into(bytearray(64)):
            pass
        with pytest.raises(TransferError) as info:
            down.finish()
    assert info.value.code == "changed_while_reading"


def test_download_of_a_file_rewritten_in_place(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"a" * 100)
    os.utime(src, ns=(0, 1_000_000_000))
    with Download.open(ANY, str(src)) as down:
        assert down.read_into(bytearray(64)) == 64
        with src.open("r+b") as f:
            f.write(b"b" * 100)  # same size, new content
        assert down.read_into(bytearray(64)) == 36
        with pytest.raises(TransferError) as info:
            down.finish()
    assert info.value.code == "changed_while_reading"


def test_enosys_switches_to_the_walk_for_good(jail: tuple[FileRoots, Path, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    roots, root, _ = jail
    calls: list[str] = []

    def no_openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
        calls.append(path)
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(transfer, "USE_OPENAT2", True)
    monkeypatch.setattr(transfer, "_openat2", no_openat2)
    assert get(roots, root / "sub" / "inner")[0] == b"inner"
    with pytest.raises(TransferError, match="symbolic link"):
        get(roots, root / "secret-link")
    assert calls == ["sub/inner"]  # asked once, then never again
    assert transfer.USE_OPENAT2 is False


def test_download_of_a_special_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(TransferError) as info:
        Download.open(ANY, str(tmp_path / "fifo"))  # must not block
    assert info.value.code == "not_a_regular_file"


# -- directory transfers ----------------------------------------------------------------------


def receive(tree: Tree, entries: list[Entry]) -> list[bool]:
    """Apply entries as the session will: ("dir", path, b""), ("file", path, data),
    ("link", path, target)."""
    changed = []
    for kind, entry, payload in entries:
        with tree.parent(entry) as parent:
            if kind == "dir":
                changed.append(make_directory(parent, 0o755))
            elif kind == "link":
                assert isinstance(payload, str)
                changed.append(make_symlink(parent, payload, entry=entry))
            else:
                assert isinstance(payload, bytes)
                with Upload(parent, size=len(payload)) as up:
                    up.write(payload)
                    up.commit(sha(payload))
                changed.append(True)
    return changed


TREE: list[Entry] = [
    ("dir", "a", b""),
    ("dir", "a/b", b""),
    ("file", "a/b/deep.txt", b"deep"),
    ("dir", "empty", b""),
    ("file", "top.txt", b"top"),
    ("link", "a/up", "../top.txt"),
    ("link", "a/b/side", "deep.txt"),
]


def test_tree_entries(tmp_path: Path, resolver: str) -> None:
    dest = tmp_path / "dest"
    with Tree.open(FileRoots((str(tmp_path),)), str(dest), create=True, mode=0o750) as tree:
        assert receive(tree, TREE) == [True] * len(TREE)
        # Again: directories and links already there are no change.
        assert receive(tree, [e for e in TREE if e[0] != "file"]) == [False] * 5
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    assert (dest / "a" / "b" / "deep.txt").read_bytes() == b"deep"
    assert (dest / "empty").is_dir() and not list((dest / "empty").iterdir())
    assert os.readlink(dest / "a" / "up") == "../top.txt"
    assert (dest / "a" / "up").read_bytes() == b"top"
    assert os.readlink(dest / "a" / "b" / "side") == "deep.txt"
    assert [p for p in dest.rglob("*") if ".rexec-tmp-" in p.name] == []


def test_tree_open_keeps_an_existing_directory_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o1777)
    with Tree.open(ANY, str(tmp_path), create=True, mode=0o700):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o1777


def test_tree_link_leading_out_is_refused(tmp_path: Path) -> None:
    with Tree.open(ANY, str(tmp_path)) as tree:
        for target in ("../../etc", "/etc/passwd"):
            with pytest.raises(TransferError) as info:
                receive(tree, [("link", "link", target)])
            assert info.value.code == "refused"
            assert "link" in str(info.value)
    assert not os.path.lexists(tmp_path / "link")


def test_tree_entry_paths_validated_before_touching_disk(tmp_path: Path) -> None:
    with Tree.open(ANY, str(tmp_path)) as tree:
        for entry in ("../escape", "/abs", "a//b", "a\0b", ""):
            with pytest.raises(TransferError) as info:
                tree.parent(entry)
            assert info.value.code == "bad_path"
    assert os.listdir(tmp_path) == []


def test_tree_never_writes_through_a_link(tmp_path: Path, resolver: str) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "sub").mkdir()
    (dest / "evil").symlink_to(outside)  # already there, leading out
    (dest / "alias").symlink_to("sub")  # a link inside the tree: not written through either
    with Tree.open(ANY, str(dest)) as tree:
        for entry in ("evil/f", "alias/f"):
            with pytest.raises(TransferError, match="symbolic link") as info:
                receive(tree, [("file", entry, b"x")])
            assert info.value.code == "refused"
    assert os.listdir(outside) == []
    assert os.listdir(dest / "sub") == []


def test_tree_link_replaces_a_file_atomically(tmp_path: Path) -> None:
    (tmp_path / "name").write_bytes(b"a file")
    (tmp_path / "d").mkdir()
    with Tree.open(ANY, str(tmp_path)) as tree:
        assert receive(tree, [("link", "name", "d")]) == [True]
        assert receive(tree, [("link", "name", "other")]) == [True]
        with pytest.raises(TransferError) as info:
            receive(tree, [("link", "d", "name")])
        assert info.value.code == "is_a_directory"
    assert os.readlink(tmp_path / "name") == "other"
    assert leftovers(tmp_path) == []


def test_tree_directory_over_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with Tree.open(ANY, str(tmp_path)) as tree, pytest.raises(TransferError) as info:
        receive(tree, [("dir", "f", b"")])
    assert info.value.code == "not_a_directory"


def test_tree_make_dirs(tmp_path: Path) -> None:
    with Tree.open(ANY, str(tmp_path)) as tree:
        with pytest.raises(TransferError) as info:
            tree.parent("x/y/f")
        assert info.value.code == "not_found"
        with tree.parent("x/y/f", make_dirs=True) as parent:
            assert isinstance(parent, Parent)
            assert parent.path == f"{tmp_path}/x/y/f"
    assert (tmp_path / "x" / "y").is_dir()


def test_walk_reports_links_as_links_and_skips_special_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a" / "b" / "f").write_bytes(b"12345")
    (src / "a" / "b" / "f").chmod(0o600)
    (src / "dirlink").symlink_to("a")  # reported, not descended
    os.mkfifo(src / "fifo")
    with Tree.open(ANY, str(src)) as tree:
        entries = list(tree.walk())
    assert [(e.kind, e.path) for e in entries] == [
        ("dir", "a"), ("dir", "a/b"), ("file", "a/b/f"), ("link", "dirlink"), ("dir", "empty"),
    ]
    f = entries[2]
    assert (f.size, f.mode) == (5, 0o600)
    assert f.mtime_ns == (src / "a" / "b" / "f").stat().st_mtime_ns
    assert entries[3].target == "a"


def test_walk_then_receive_copies_a_tree(tmp_path: Path, resolver: str) -> None:
    """get -r's half feeding put -r's half: what one walks the other rebuilds exactly."""
    src, dest = tmp_path / "src", tmp_path / "dest"
    with Tree.open(ANY, str(tmp_path / "seed"), create=True) as seed:
        receive(seed, TREE)
    os.rename(tmp_path / "seed", src)
    copied: list[Entry] = []
    with Tree.open(ANY, str(src)) as tree:
        for e in tree.walk():
            if e.kind == "file":
                data, digest = bytearray(), ""
                with tree.download(e.path) as down:
                    buffer = bytearray(3)
                    while n := down.read_into(buffer):
                        data += buffer[:n]
                    digest = down.finish()
                assert digest == sha(bytes(data))
                copied.append(("file", e.path, bytes(data)))
            else:
                copied.append((e.kind, e.path, e.target or b""))
    with Tree.open(FileRoots((str(tmp_path),)), str(dest), create=True) as tree:
        receive(tree, copied)

    def snapshot(root: Path) -> list[tuple[str, str]]:
        return sorted(
            (str(p.relative_to(root)),
             "->" + os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else p.read_text())
            for p in root.rglob("*"))
    assert snapshot(dest) == snapshot(src)
    assert len(snapshot(dest)) == len(TREE)


def test_tree_download_refuses_a_link(tmp_path: Path, resolver: str) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to("f")
    with Tree.open(ANY, str(tmp_path)) as tree:
        with tree.download("f") as down:
            assert down.size == 1
        with pytest.raises(TransferError, match="symbolic link") as info:
            tree.download("link")
    assert info.value.code == "refused"


def test_a_digest_remembered_is_used_only_while_the_file_is_the_same(tmp_path: Path) -> None:
    from rexec.server.transfer import DigestCache, remember_digest

    roots = FileRoots(None)
    target = tmp_path / "f"
    target.write_bytes(b"a" * 1000)
    good = hashlib.sha256(b"a" * 1000).hexdigest()
    cache = DigestCache()
    remember_digest(roots, str(target), base=None, name=None, cache=cache)
    assert cache.get(os.stat(target)) == good
    with open_parent(roots, str(target)) as parent:
        assert unchanged(parent, size=1000, sha256_hex=good, cache=cache)
    target.write_bytes(b"b" * 1000)  # same size, rewritten: the cached digest is not used
    assert cache.get(os.stat(target)) is None
    with open_parent(roots, str(target)) as parent:
        assert not unchanged(parent, size=1000, sha256_hex=good, cache=cache)
    remember_digest(roots, str(tmp_path / "missing"), base=None, name=None, cache=cache)
    for n in range(DigestCache.LIMIT + 5):  # bounded: the oldest go first
        cache.put(SimpleNamespace(st_dev=0, st_ino=n, st_size=1, st_mtime_ns=0,  # type: ignore[arg-type]
                                  st_ctime_ns=0), "0" * 64)
    assert len(cache._known) == DigestCache.LIMIT


@pytest.mark.parametrize("received", ["right", "wrong", "none"])
def test_an_upload_hashed_apart_is_checked_against_the_digest_it_is_given(
        tmp_path: Path, received: str) -> None:
    data = b"hashed by the caller, on another thread"
    dest = tmp_path / "f"
    digest = {"right": hashlib.sha256(data).hexdigest(),
              "wrong": hashlib.sha256(data + b"!").hexdigest(), "none": None}[received]
    with open_parent(ANY, str(dest)) as parent, Upload(parent, size=len(data),
                                                         hashed_apart=True) as up:
        up.write(data)
        if received == "right":
            up.commit(hashlib.sha256(data).hexdigest(), digest)
        else:
            with pytest.raises(TransferError if received == "wrong" else ValueError):
                up.commit(hashlib.sha256(data).hexdigest(), digest)
    assert (dest.exists() and dest.read_bytes() == data) == (received == "right")
    assert [p.name for p in tmp_path.iterdir()] == (["f"] if received == "right" else [])
