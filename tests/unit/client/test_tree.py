"""The plans of put -r and get -r, step by step, with made-up outcomes (no connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rexec.client import tree
from rexec.client.core import TreeEntry
from rexec.client.transfer import LocalDestination, LocalEntry, LocalTree, check_entry
from rexec.result import EntryError, TreeResult


def local_tree(*entries: LocalEntry) -> LocalTree:
    return LocalTree(Path("/src"), 0o755, 5, entries, ("sock",), ())


def drive(plan: tree.Plan, answer) -> tuple[list[tree.Step], TreeResult]:
    steps: list[tree.Step] = []
    try:
        step = next(plan)
        while True:
            steps.append(step)
            step = plan.send(answer(step))
    except StopIteration as stop:
        return steps, stop.value


def ok(step: tree.Step) -> tree.Outcome:
    return tree.Done(True, 7 if isinstance(step, tree.SendFile) else 0)


def test_put_sends_the_top_then_every_entry_in_order() -> None:
    plan = tree.put_tree(local_tree(
        LocalEntry("dir", "a", 0o750), LocalEntry("file", "a/f", 0o644, 7, 9),
        LocalEntry("link", "a/l", 0o777, target="f")), "/dst")
    steps, result = drive(plan, ok)
    assert steps == [
        tree.MakeDir("/dst", None, 0o755, None),
        tree.MakeDir("a", "/dst", 0o750, None),
        tree.SendFile(Path("/src/a/f"), "a/f", "/dst", 0o644, None, False),
        tree.MakeLink("a/l", "/dst", "f"),
    ]
    assert (result.files, result.directories, result.links, result.bytes) == (1, 1, 1, 7)
    assert result.changed == 4 and result.ok and result.skipped == ("sock",)


def test_a_directory_that_fails_is_one_error_and_its_entries_are_not_tried() -> None:
    plan = tree.put_tree(local_tree(
        LocalEntry("dir", "a", 0o755), LocalEntry("file", "a/f", 0o644, 1),
        LocalEntry("dir", "a/b", 0o755), LocalEntry("file", "ab", 0o644, 1)), "/dst")

    def answer(step: tree.Step) -> tree.Outcome:
        if isinstance(step, tree.MakeDir) and step.path == "a":
            return EntryError("a", "permission_denied", "/dst/a: permission denied")
        return ok(step)

    steps, result = drive(plan, answer)
    assert [getattr(s, "path", None) for s in steps] == ["/dst", "a", "ab"]
    assert [e.path for e in result.errors] == ["a"] and not result.ok


def test_a_link_out_of_the_tree_is_refused_without_being_sent() -> None:
    plan = tree.put_tree(local_tree(LocalEntry("link", "x", 0o777, target="/etc/passwd"),
                                    LocalEntry("link", "d/y", 0o777, target="../../up")), "/dst")
    steps, result = drive(plan, ok)
    assert steps == [tree.MakeDir("/dst", None, 0o755, None)]
    assert [(e.path, e.code) for e in result.errors] == [("x", "refused"), ("d/y", "refused")]


def test_preserve_sets_directory_mtimes_last_and_deepest_first() -> None:
    plan = tree.put_tree(local_tree(
        LocalEntry("dir", "a", 0o755, mtime_ns=1), LocalEntry("dir", "a/b", 0o700, mtime_ns=2),
        LocalEntry("file", "a/b/f", 0o600, 1, 3)), "/dst", preserve=True)
    steps, _ = drive(plan, ok)
    assert steps[0] == tree.MakeDir("/dst", None, 0o755, 5)
    assert steps[3] == tree.SendFile(Path("/src/a/b/f"), "a/b/f", "/dst", 0o600, 3, False)
    assert steps[4:] == [tree.MakeDir("a/b", "/dst", 0o700, 2), tree.MakeDir("a", "/dst", 0o755, 1)]


def test_the_top_refused_ends_the_put_with_one_error() -> None:
    plan = tree.put_tree(local_tree(LocalEntry("file", "f", 0o644, 1)), "/dst")
    steps, result = drive(plan, lambda s: EntryError(".", "refused", "refused: outside"))
    assert len(steps) == 1 and [e.path for e in result.errors] == ["."]


@pytest.mark.parametrize(("kind", "path", "target"), [
    ("file", "../x", None), ("file", "/abs", None), ("file", "a//b", None), ("file", ".", None),
    ("file", "a/./b", None), ("file", "a\x00b", None), ("link", "l", "/etc"),
    ("link", "l", "../x"), ("link", "d/l", "x/../../y"), ("link", "l", ""),
])
def test_check_entry_refuses_what_leaves_the_tree(kind: str, path: str, target: str | None
                                                  ) -> None:
    assert check_entry(kind, path, target) is not None


@pytest.mark.parametrize(("kind", "path", "target"), [
    ("file", "a", None), ("dir", "a/b", None), ("link", "d/l", "../x"), ("link", "l", "x/y"),
])
def test_check_entry_takes_what_stays_inside(kind: str, path: str, target: str | None) -> None:
    assert check_entry(kind, path, target) is None


def test_get_checks_the_listing_and_writes_nothing_through_a_link(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    plan = tree.get_tree("/src", dest)
    step = next(plan)
    assert step == tree.ListTree("/src")
    listing = tree.Listing((
        TreeEntry("dir", "d", 0o755, 0, 0, None),
        TreeEntry("link", "l", 0o777, 0, 0, "d"),
        TreeEntry("file", "l/f", 0o644, 3, 0, None),  # through the link: refused
        TreeEntry("file", "../evil", 0o644, 3, 0, None),  # out of the tree: refused
        TreeEntry("file", "d/f", 0o644, 3, 0, None),
    ))
    step = plan.send(listing)
    assert step == tree.FetchFile("d/f", "/src", dest / "d/f", False)
    with pytest.raises(StopIteration) as stop:
        plan.send(tree.Done(True, 3))
    result: TreeResult = stop.value.value
    assert sorted(e.path for e in result.errors) == ["../evil", "l/f"]
    assert (result.files, result.directories, result.links) == (1, 1, 1)
    assert (dest / "d").is_dir() and (dest / "l").is_symlink()
    assert not (tmp_path / "evil").exists()


def test_local_destination_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    destination = LocalDestination(tmp_path)
    with pytest.raises(Exception, match="was not made by this transfer"):
        destination.path("never/f")
    assert destination.make_dir("d", 0o700, preserve=True)
    assert not destination.make_dir("d", 0o700, preserve=True)
    assert destination.path("d/f") == tmp_path / "d" / "f"
