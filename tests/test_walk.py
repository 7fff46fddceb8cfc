"""The bounds of a tree walk (vmscan.walk): what a hostile guest tree is cut to, and said.

Pure: listings as ``find0`` gives them (a folder before what is in it). The real
appliance cases (a 2,000-level tree past the daemon's 8 KiB line, a folder wider than
the limit) are in ``tests/test_deep_tree.py``.
"""

from __future__ import annotations

from vmscan.walk import Cut, WalkLimits, bound_listing


def _chain(levels: int, name: bytes = b"d") -> list[bytes]:
    return [b"/".join([name] * n) for n in range(1, levels + 1)]


def test_a_normal_tree_is_kept_whole() -> None:
    names = [b"etc", b"etc/passwd", b"usr", b"usr/bin", b"usr/bin/ls"]
    out = bound_listing(names, WalkLimits())
    assert out.names == names
    assert out.cuts == []


def test_depth_is_cut_at_the_deepest_folder_allowed_and_counted() -> None:
    names = [*_chain(10), b"top.txt"]
    out = bound_listing(names, WalkLimits(max_depth=4))
    assert out.names == [*_chain(4), b"top.txt"]
    assert out.cuts == [Cut(b"d/d/d/d", "deeper than 4 levels", 6)]
    assert (
        out.cuts[0].message()
        == "/d/d/d/d: not walked: deeper than 4 levels; 6 entries below it not walked"
    )


def test_path_length_is_cut_before_the_daemon_limit() -> None:
    name = b"x" * 200
    out = bound_listing(_chain(30, name), WalkLimits())
    kept = out.names
    assert all(len(n) + 1 <= 4000 for n in kept)
    assert len(kept) == 19  # 19 * 201 bytes fit in 4,000, 20 do not
    (cut,) = out.cuts
    assert cut.folder == kept[-1] and cut.dropped == 11
    assert cut.why == "path longer than 4000 bytes"


def test_a_wide_folder_keeps_the_first_entries_and_drops_the_subtrees_of_the_rest() -> None:
    names = [b"w"]
    for i in range(5):
        names += [b"w/%d" % i, b"w/%d/inner" % i]
    names.append(b"z")
    out = bound_listing(names, WalkLimits(max_folder_entries=2))
    assert out.names == [b"w", b"w/0", b"w/0/inner", b"w/1", b"w/1/inner", b"z"]
    # 3 entries of w past the limit, and the 3 entries inside them.
    assert out.cuts == [Cut(b"w", "holds more than 2 entries", 6)]


def test_the_total_is_bounded_too() -> None:
    names = [b"f%d" % i for i in range(10)]
    out = bound_listing(names, WalkLimits(max_entries=4))
    assert out.names == names[:4]
    assert out.cuts == [Cut(b"", "the tree holds more than 4 entries", 6)]
    assert out.cuts[0].path == "/"


def test_names_that_are_not_utf8_are_cut_like_any_other() -> None:
    names = [b"\xff", b"\xff/\xfe", b"\xff/\xfe/deep"]
    out = bound_listing(names, WalkLimits(max_depth=2))
    assert out.names == names[:2]
    assert out.cuts[0].path == "/\\xff/\\xfe"


def test_the_reason_never_depends_on_what_the_name_holds() -> None:
    cut = Cut(b"a: b", "deeper than 4 levels", 1)
    assert cut.reason() == "not walked: deeper than 4 levels; 1 entry below it not walked"
    assert cut.message() == "/a: b: " + cut.reason()
