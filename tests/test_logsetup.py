"""The mail log (ismail/logsetup.py): what a user reads in DATA/logs/maillog.log.

Records are formatted by the writer thread, later than they were logged; these tests
check that the file still says what was true when each line was logged, in order."""
import contextlib
import io
import logging
import shutil
import tempfile
import time
import unittest
from pathlib import Path

from ismail.logsetup import LOG_FORMAT, MailLogHandler, Repeats, _Formatter


class MailLogTest(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-log-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.path = self.dir / "maillog.log"
        self.handler = MailLogHandler(self.path)
        self.handler.setFormatter(_Formatter(LOG_FORMAT))
        self.addCleanup(self.handler.close)
        self.log = logging.getLogger(f"ismail.test-logsetup.{self.id()}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        self.log.addHandler(self.handler)
        self.addCleanup(self.log.removeHandler, self.handler)

    def lines(self):
        self.handler.flush()
        return self.path.read_text("utf-8").splitlines()

    def test_lines_keep_their_order_and_their_values(self):
        recipients = ["<a@example.test>"]
        self.log.info("%s: from=<%s> size=%d client=%s", "Q1", "s@example.test", 2048, "127.0.0.1")
        self.log.info("recipients %s", recipients)  # a list: could change before the writer runs
        recipients.append("<b@example.test>")
        recipients[0] = "<changed@example.test>"
        self.log.info("path %s, ratio %.2f, nothing %s", Path("new") / "x", 0.5, None)
        lines = self.lines()
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].endswith("INFO " + self.log.name +
                                          ": Q1: from=<s@example.test> size=2048 client=127.0.0.1"),
                        lines[0])
        self.assertTrue(lines[1].endswith("recipients ['<a@example.test>']"), lines[1])
        self.assertTrue(lines[2].endswith(f"path {Path('new') / 'x'}, ratio 0.50, nothing None"),
                        lines[2])

    def test_the_time_is_when_the_line_was_logged(self):
        record = self.log.makeRecord(self.log.name, logging.INFO, "", 0, "from %s", ("then",), None)
        record.created, record.msecs = 1577934245.25, 250.0  # 2020-01-02 03:04:05.250 UTC
        self.log.handle(record)
        line = self.lines()[0]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1577934245))
        self.assertTrue(line.startswith(when + ",250 INFO"), line)
        self.assertTrue(line.endswith("from then"), line)

    def test_an_exception_is_written_with_its_traceback(self):
        try:
            raise ValueError("disk on fire")
        except ValueError:
            self.log.exception("storing %s failed", "Q2")
        self.log.info("after")
        lines = self.lines()
        self.assertIn("storing Q2 failed", lines[0])
        self.assertTrue(any("ValueError: disk on fire" in line for line in lines), lines)
        self.assertIn("after", lines[-1])

    def test_a_line_that_cannot_be_formatted_does_not_take_the_others(self):
        self.log.info("one %d", "not a number")
        self.log.info("two %s", "fine")
        with contextlib.redirect_stderr(io.StringIO()) as err:
            lines = self.lines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].endswith("two fine"), lines)
        self.assertIn("not a number", err.getvalue())

    def test_warnings_are_written_at_once_and_close_writes_the_rest(self):
        self.log.info("pending %s", "line")
        self.log.warning("the disk is %d%% full", 97)
        text = self.path.read_text("utf-8")  # no flush: a warning writes everything before it
        self.assertIn("pending line", text)
        self.assertIn("WARNING", text)
        self.assertIn("the disk is 97% full", text)
        self.log.info("last %s", "one")
        self.handler.close()
        self.assertIn("last one", self.path.read_text("utf-8"))


if __name__ == "__main__":
    unittest.main()


class RepeatsTest(unittest.TestCase):
    """A flood of one warning (a client refused in a loop) is one line a minute and a count."""

    def setUp(self):
        self.now = 1000.0
        self.repeats = Repeats(logging.getLogger("ismail.test-repeats"), clock=lambda: self.now)

    def said(self, events):
        with self.assertLogs("ismail.test-repeats", "WARNING") as cm:
            logging.getLogger("ismail.test-repeats").warning("marker")
            for key, what, msg, args in events:
                self.repeats.warning(key, what, msg, *args)
        return [r.getMessage() for r in cm.records[1:]]

    def refusal(self, ip):
        return (ip, f"connections refused from {ip}", "refused connection from %s", (ip,))

    def test_a_flood_is_one_line_then_a_count_when_the_minute_is_over(self):
        lines = self.said([self.refusal("192.0.2.1")] * 5000)
        self.assertEqual(len(lines), 1, lines[:3])
        self.assertIn("refused connection from 192.0.2.1", lines[0])
        self.assertIn("more in the next 60 s are counted", lines[0])
        self.now += 59.0
        self.assertEqual(self.said([self.refusal("192.0.2.1")]), [])
        self.now += 1.5
        lines = self.said([self.refusal("192.0.2.1")])
        self.assertEqual(lines, ["connections refused from 192.0.2.1: 5000 more in the last 60 s, "
                                 "not logged one by one",
                                 "refused connection from 192.0.2.1 (more in the next 60 s are "
                                 "counted, not logged one by one)"])

    def test_each_key_is_said_and_a_quiet_key_is_counted_when_another_speaks(self):
        lines = self.said([self.refusal("192.0.2.1"), self.refusal("192.0.2.2"),
                           self.refusal("192.0.2.1")])
        self.assertEqual([line.split(" (")[0] for line in lines],
                         ["refused connection from 192.0.2.1", "refused connection from 192.0.2.2"])
        self.now += 61
        lines = self.said([self.refusal("192.0.2.3")])
        self.assertEqual(lines[0], "connections refused from 192.0.2.1: 1 more in the last 60 s, "
                                   "not logged one by one")
        self.assertEqual(len(lines), 2, lines)  # 192.0.2.2 had no more: nothing to count
        self.assertIn("192.0.2.3", lines[1])

    def test_many_keys_are_bounded(self):
        repeats = Repeats(logging.getLogger("ismail.test-repeats"), max_keys=100, clock=lambda: self.now)
        self.repeats = repeats
        lines = self.said([self.refusal(f"10.0.{n // 256}.{n % 256}") for n in range(1000)] * 2)
        self.assertLessEqual(len(repeats._open), 101)
        # Every address was said the first time; one pushed out early is said again, never lost.
        self.assertTrue(all(any(f"from 10.0.{n // 256}.{n % 256} " in line for line in lines)
                            for n in range(1000)))
