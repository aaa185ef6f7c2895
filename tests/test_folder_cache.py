"""What the store remembers between looks, and when it must look again.

* A directory's mtime proves nothing for one clock tick after it was set: a view lists
  the folder again until that tick is surely over (2 s for whole-second mtimes, FAT;
  for file systems with fractions, what the server measured at start, 0.1 s before).
* A view opened on a folder nobody changed since another view listed it takes that
  listing (the shared snapshot) instead of listing again; any change makes it list.
* Parsed UID indexes are shared between sessions only when read after their file's
  mtime had settled.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

from ismail.store.folders import MailStore
from ismail.store import folders_box
from ismail.store.folders_box import (SHARED_INDEXES, Box, measure_mtime_slack, settled_after,
                                         slack_from_samples, use_measured_slack)
from ismail.store.folders_view import SNAPSHOTS
from tests.test_folders import MSG, age_dirs, deliver


def set_mtime_ns(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns))


class CacheCase(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-cache-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.root = self.dir / "user"
        self.store = MailStore(self.root)
        SNAPSHOTS.clear()
        SHARED_INDEXES.clear()
        # The slack these tests' waits assume, whatever a server started earlier measured.
        slack = mock.patch.object(folders_box, "MTIME_SLACK_FINE", 0.1)
        slack.start()
        self.addCleanup(slack.stop)
        for n in range(5):
            deliver(self.root, MSG + str(n).encode())

    def settle(self):
        """Put the folder's directories and index (made if missing) a minute in the past."""
        Box(self.root, "INBOX", self.root).index()
        age_dirs(self.root / "new", self.root / "cur", self.root / "ismail-uidlist")

    def scans(self):
        return mock.patch.object(Box, "scan", autospec=True, side_effect=Box.scan)


class MtimeGranularityTest(CacheCase):
    def test_slack_follows_the_mtime_resolution(self):
        whole = 1_700_000_000 * 10**9
        self.assertEqual(settled_after(whole), 1_700_000_002.0, "FAT-like: whole seconds, 2 s")
        self.assertAlmostEqual(settled_after(whole + 123_456_789), 1_700_000_000.223456789, places=6)
        with mock.patch.object(folders_box, "MTIME_SLACK_FINE", 0.012):   # as measured
            self.assertAlmostEqual(settled_after(whole + 123_456_789), 1_700_000_000.135456789,
                                   places=6)
            self.assertEqual(settled_after(whole), 1_700_000_002.0, "whole seconds: still 2 s")

    def check_change_in_the_same_tick(self, mtime_ns: int):
        view = self.store.open("INBOX")
        self.assertEqual(len(view.messages), 5)
        set_mtime_ns(self.root / "new", mtime_ns)
        view.refresh()
        deliver(self.root, MSG + b"late")
        set_mtime_ns(self.root / "new", mtime_ns)   # the same tick: the mtime did not move
        changes = view.refresh()
        self.assertEqual(len(changes.added), 1, "a change within the mtime's tick is still seen")
        self.assertEqual(len(view.messages), 6)

    def test_change_in_the_same_tick_fine_mtimes(self):
        self.check_change_in_the_same_tick(time.time_ns() + 30_000_000)

    def test_change_in_the_same_tick_whole_second_mtimes(self):
        self.check_change_in_the_same_tick((int(time.time()) + 1) * 10**9)

    def test_change_in_the_same_tick_seen_by_a_look_after_the_tick(self):
        # The view lists the folder within its mtime's tick; a file then arrives in the same
        # tick (the mtime stays); the next look comes only after the tick: it must list again.
        mtime = time.time_ns()
        set_mtime_ns(self.root / "new", mtime)
        view = self.store.open("INBOX")
        deliver(self.root, MSG + b"same tick")
        set_mtime_ns(self.root / "new", mtime)
        time.sleep(0.15)   # past settled_after(mtime) for a file system with fractions
        self.assertEqual(len(view.refresh().added), 1)
        self.assertFalse(view.refresh(), "settled now: nothing more to report")

    def unsettled_view(self):
        """A view that has just listed the folder within its mtimes' tick (set a little
        ahead, so the tick lasts the whole test); the mtime to put back after a change."""
        mtime = time.time_ns() + 5 * 10**9
        for sub in ("new", "cur"):
            set_mtime_ns(self.root / sub, mtime)
        view = self.store.open("INBOX")
        view.refresh()
        return view, mtime

    def test_unsettled_folder_unchanged_is_not_parsed_again(self):
        view, _ = self.unsettled_view()
        with self.scans() as scan:
            for _ in range(3):
                self.assertFalse(view.refresh())
        self.assertEqual(scan.call_count, 0, "the same file names: the same view")
        self.assertEqual(len(view.messages), 5)

    def test_a_look_that_finds_the_folder_settled_shares_it(self):
        mtime = time.time_ns()
        for sub in ("new", "cur"):
            set_mtime_ns(self.root / sub, mtime)
        first = self.store.open("INBOX")          # listed within the tick
        time.sleep(0.15)                          # past settled_after(mtime)
        with self.scans() as scan:
            self.assertFalse(first.refresh())     # the same names: sure now, and shared
            second = self.store.open("INBOX")
            self.assertFalse(second.refresh())
        self.assertEqual(scan.call_count, 0, "the second view took the settled listing")
        self.assertEqual(len(second.messages), 5)

    def test_unsettled_folder_changed_in_the_same_tick_is_seen(self):
        view, mtime = self.unsettled_view()
        first = view.messages[0]
        # Another program flags a message (a rename) and a message comes, in the same tick.
        os.rename(first.path, self.root / "cur" / f"{first.key}:2,FS")
        deliver(self.root, MSG + b"same tick")
        for sub in ("new", "cur"):
            set_mtime_ns(self.root / sub, mtime)
        changes = view.refresh()
        self.assertEqual([ref.uid for ref in changes.flags_changed], [first.uid])
        self.assertEqual(changes.flags_changed[0].flags, frozenset({"\\Flagged", "\\Seen"}))
        self.assertEqual(len(changes.added), 1)
        # A file taken away in the same tick, too.
        gone = view.messages[-1]
        os.unlink(gone.path)
        for sub in ("new", "cur"):
            set_mtime_ns(self.root / sub, mtime)
        self.assertEqual(view.refresh().expunged, [gone.uid])

    def test_settled_folder_is_not_listed_again(self):
        self.settle()
        view = self.store.open("INBOX")
        with self.scans() as scan:
            for _ in range(3):
                self.assertFalse(view.refresh())
        self.assertEqual(scan.call_count, 0)


class SnapshotTest(CacheCase):
    def test_second_view_takes_the_listing_of_the_first(self):
        self.settle()
        first = self.store.open("INBOX")
        first.store_flags([first.messages[0].uid], ["\\Seen", "Work"], "add")
        self.settle()
        first.refresh()                      # a complete listing of the settled folder
        with self.scans() as scan:
            second = self.store.open("INBOX")
        self.assertEqual(scan.call_count, 0)
        self.assertEqual(second.messages, first.messages)
        self.assertEqual((second.uidvalidity, second.uidnext), (first.uidvalidity, first.uidnext))
        self.assertEqual(second.messages[0].flags, {"\\Seen", "Work"})
        # The views are independent: a change through one is taken in by the other as a change.
        second.store_flags([second.messages[1].uid], ["\\Flagged"], "add")
        self.assertNotIn("\\Flagged", first.messages[1].flags)
        changed = first.refresh().flags_changed
        self.assertEqual([m.uid for m in changed], [second.messages[1].uid])

    def test_any_change_makes_the_next_view_list_again(self):
        self.settle()
        self.store.open("INBOX").refresh()
        deliver(self.root, MSG + b"new")
        self.settle()
        with self.scans() as scan:
            view = self.store.open("INBOX")
        self.assertGreater(scan.call_count, 0)
        self.assertEqual(len(view.messages), 6)

    def test_expunge_elsewhere_is_seen_by_a_new_view(self):
        self.settle()
        first = self.store.open("INBOX")
        doomed = first.messages[2].uid
        first.store_flags([doomed], ["\\Deleted"], "add")
        self.assertEqual(first.expunge(), [doomed])
        self.settle()
        view = self.store.open("INBOX")
        self.assertNotIn(doomed, [m.uid for m in view.messages])
        self.assertEqual(len(view.messages), 4)

    def test_unsettled_listing_is_shared_and_checked_at_the_next_look(self):
        mtime = time.time_ns() + 50_000_000
        set_mtime_ns(self.root / "new", mtime)
        self.store.open("INBOX")                      # lists within the mtime's tick
        deliver(self.root, MSG + b"same tick")        # and a message comes in that tick
        set_mtime_ns(self.root / "new", mtime)
        with self.scans() as scan:
            second = self.store.open("INBOX")
        self.assertEqual(scan.call_count, 0, "opened from the first view's listing")
        self.assertEqual(len(second.messages), 5)
        time.sleep(0.2)                               # even when the next look comes later
        self.assertEqual(len(second.refresh().added), 1, "a listing taken within the tick is checked")

    def test_new_uids_in_the_index_make_it_list_again(self):
        # An APPEND elsewhere gives out a UID before its file is in place: the index's
        # UIDNEXT moves, and a snapshot from before it is not taken.
        self.settle()
        self.store.open("INBOX").refresh()
        box = Box(self.root, "INBOX", self.root)
        with box.locked():
            index = box.index_locked()
            index.add("1700000000.reserved,S=1,W=1")
            box.write_locked(index)
        self.settle()
        with self.scans() as scan:
            self.store.open("INBOX")
        self.assertGreater(scan.call_count, 0)


class SharedIndexTest(CacheCase):
    def test_index_read_right_after_a_write_is_not_shared(self):
        view = self.store.open("INBOX")
        view.append(MSG + b"appended")              # the index file is brand new
        Box(self.root, "INBOX", self.root).index()
        stat = Box(self.root, "INBOX", self.root).uidlist.stat()
        self.assertIsNone(SHARED_INDEXES.get(self.root, stat))

    def test_settled_index_is_shared_and_writers_get_a_copy(self):
        self.settle()
        a = Box(self.root, "INBOX", self.root)
        shared = a.index()
        b = Box(self.root, "INBOX", self.root)
        self.assertIs(b.index(), shared, "parsed once, handed to the next session")
        with b.locked():
            mine = b.index_locked()
            self.assertIsNot(mine, shared)
            before = dict(shared.uids)
            mine.add("1700000001.other,S=1,W=1")
            self.assertEqual(shared.uids, before, "a writer's change never shows in the shared copy")
            b.write_locked(mine)
        self.assertIn("1700000001.other,S=1,W=1", Box(self.root, "INBOX", self.root).index().uids)

    def test_header_gives_the_numbers_without_the_lines(self):
        box = Box(self.root, "INBOX", self.root)
        index = box.index()
        self.assertEqual(box.uidlist.header(), (index.uidvalidity, index.uidnext, index.first_recent))
        (self.root / "ismail-uidlist").write_bytes(b"garbage\n")
        self.assertIsNone(box.uidlist.header())


if __name__ == "__main__":
    unittest.main()


MS = 1_000_000


class MeasuredSlackTest(unittest.TestCase):
    """The server watches the file system that holds the mail at start: how long after a
    folder's mtime a change can still leave it unchanged.  Folders are listed again at
    every look only that long after a change, not a fixed 0.1 s."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-slack-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        slack = mock.patch.object(folders_box, "MTIME_SLACK_FINE", 0.1)
        slack.start()
        self.addCleanup(slack.stop)

    def coarse(self, tick_ms: float, lag_ms: float = 0.0, every_ms: float = 0.1, span_ms: float = 50):
        """Samples of a file system whose clock moves in ticks of ``tick_ms``, ``lag_ms``
        behind ours, changed every ``every_ms``."""
        base = 1_700_000_000 * 10**9 + 123 * MS
        out, t = [], 0.0
        while t < span_ms:
            stamp = base + int((t - lag_ms) // tick_ms * tick_ms * MS)
            out.append((base + int(t * MS), stamp))
            t += every_ms
        return out

    def test_slack_from_a_coarse_clock(self):
        self.assertAlmostEqual(slack_from_samples(self.coarse(15.625)), 0.0332, delta=0.0005,
                               msg="Windows' 15.6 ms tick: twice it, and 2 ms")
        self.assertAlmostEqual(slack_from_samples(self.coarse(4)), 0.010, delta=0.0005,
                               msg="Linux at 250 Hz: 4 ms doubled is under the floor")
        fine = [(t, t - 3000) for t, _ in self.coarse(1)]       # every change a new mtime
        self.assertEqual(slack_from_samples(fine), folders_box.MTIME_SLACK_FLOOR)

    def test_slack_from_a_file_server_whose_clock_is_behind(self):
        slack = slack_from_samples(self.coarse(1, lag_ms=3000))
        self.assertGreater(slack, 6.0, "3 s behind: a change shows in the mtime 3 s late")
        ahead = slack_from_samples(self.coarse(1, lag_ms=-3000))
        self.assertEqual(ahead, folders_box.MTIME_SLACK_FLOOR, "ahead: its mtimes are in our future")

    def test_an_mtime_that_never_moved_calls_for_the_coarse_slack(self):
        self.assertEqual(slack_from_samples(self.coarse(1000, span_ms=50)), folders_box.MTIME_SLACK)
        self.assertEqual(slack_from_samples([]), 0.1, "no sample: the default stays")

    def test_measuring_here_leaves_nothing_behind(self):
        (self.dir / (folders_box.PROBE_PREFIX + ".999")).mkdir()   # a crashed run's probe
        (self.dir / (folders_box.PROBE_PREFIX + ".999") / "a").write_bytes(b"")
        (self.dir / "INBOX").mkdir()
        slack = use_measured_slack(self.dir)
        self.assertEqual(folders_box.MTIME_SLACK_FINE, slack)
        self.assertGreaterEqual(slack, folders_box.MTIME_SLACK_FLOOR)
        self.assertLess(slack, 2.0)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["INBOX"])

    def test_a_file_system_is_measured_once_a_process(self):
        # A server started again (after a change of settings) takes the figure it has.
        with mock.patch.dict(folders_box._MEASURED, clear=True), \
                mock.patch.object(folders_box, "measure_mtime_slack", return_value=0.012) as probe:
            (self.dir / "a").mkdir()
            self.assertEqual(use_measured_slack(self.dir), 0.012)
            self.assertEqual(use_measured_slack(self.dir / "a"), 0.012)
            self.assertEqual(probe.call_count, 1)
            self.assertEqual(folders_box.MTIME_SLACK_FINE, 0.012)

    def test_a_change_after_the_measured_slack_always_moves_the_mtime(self):
        # The promise the views rely on, checked on this machine's file systems: a look at
        # time T that saw mtime M, with T >= M + slack, sees any later change in the mtime.
        # The temporary folder and, where there is one, a RAM disk (coarse 4 ms ticks on
        # Linux, where the disk's ext4 has fine time stamps).
        places = [self.dir]
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            places.append(Path(tempfile.mkdtemp(prefix="ismail-slack-", dir=shm)))
            self.addCleanup(shutil.rmtree, places[-1], ignore_errors=True)
        deadline = time.monotonic() + 10
        for place in places:
            slack = measure_mtime_slack(place)
            folder = place / "folder"
            folder.mkdir()
            missed = 0
            for i in range(60):
                if time.monotonic() > deadline:
                    break
                mtime = os.stat(folder).st_mtime_ns
                while time.time() < mtime / 1e9 + slack:      # the look that trusts it
                    time.sleep(0.0005)
                if i % 3 == 0:                                   # a change after it: mail
                    (folder / "a").write_bytes(b"")              # comes, is flagged, goes
                elif i % 3 == 1:
                    os.replace(folder / "a", folder / "b")
                else:
                    os.unlink(folder / "b")
                if os.stat(folder).st_mtime_ns == mtime:
                    missed += 1
            self.assertEqual(missed, 0, f"{place}: {missed} changes kept the mtime "
                                        f"{slack * 1000:.1f} ms after it")
