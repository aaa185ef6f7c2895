"""The SMTP loop on select(), the path the Windows build runs.

On Linux the loop waits with epoll, which sees a socket another thread registers while
it waits; Windows has only select(), with which a worker hands a connection back through
the loop itself (net.poller, net.reactor.take_back).  Here the loop's own tests run again
with ISMAIL_POLLER=select, which makes the loop use select() on Linux too: the servers
the tests start in-process, and the `python3 -m ismail run` processes they start (which
inherit the environment).  `ismail loadtest` honours it as well.
"""
from __future__ import annotations

import os
import time
import unittest
from unittest import mock

from tests import test_crash, test_hostile, test_loadtest, test_reactor, test_receiver
from tests.support import ServerProcess, SMTPTalk


class OnSelect:
    """Run the test's servers with the loop on select()."""

    def setUp(self) -> None:
        env = mock.patch.dict(os.environ, {"ISMAIL_POLLER": "select"})
        env.start()
        self.addCleanup(env.stop)  # after the servers' own clean-ups (added later, run first)
        super().setUp()


class SwitchTest(OnSelect, test_receiver.ReceiverTestCase):
    """The switch takes: both kinds of server say which wait they use, and serve."""

    def test_in_process_server_waits_with_select_and_takes_mail(self) -> None:
        ms = self.start_inprocess({"trusted_networks": ["127.0.0.0/8"]})
        talk = self.greeted()
        self.assertRegex(self.send_message(talk, b"Subject: on select\r\n\r\nhello"), rb"^250 ")
        self.assertEqual(ms.reactor._sel.name, "select")
        self.assertEqual(len(test_receiver.maildir_files(self.data_dir)), 1)

    def test_server_process_waits_with_select_and_takes_mail(self) -> None:
        sp = ServerProcess({}).start()
        self.addCleanup(sp.cleanup)
        with SMTPTalk(sp.port) as t:
            self.assertRegex(t.reply(), rb"^220 ")
            self.assertRegex(t.cmd("EHLO client.example.org"), rb"^250")
            self.assertRegex(t.cmd("MAIL FROM:<a@example.org>"), rb"^250 ")
            self.assertRegex(t.cmd("RCPT TO:<user@example.test>"), rb"^250 ")
            self.assertRegex(t.cmd("DATA"), rb"^354 ")
            self.assertRegex(t.cmd(b"Subject: on select\r\n\r\nhello\r\n."), rb"^250 ")
        self.assertEqual(sp.count(), 1)
        deadline = time.monotonic() + 10  # the log is written out every quarter second
        while "SMTP loop: waits with" not in sp.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("SMTP loop: waits with select", sp.log_text())


# The loop's tests (net.reactor): many clients, pipelining, hand-overs to the workers and
# back, a lone client's mail settled by the loop, slow placing, a stop under load.
class LoopTest(OnSelect, test_reactor.ReactorTest):
    pass


class SlowPlacingTest(OnSelect, test_reactor.SlowPlacingTest):
    pass


class LoneClientTest(OnSelect, test_reactor.LoneClientTest):
    pass


class FollowUpTest(OnSelect, test_reactor.FollowUpTest):
    pass


class StopUnderLoadTest(OnSelect, test_reactor.StopUnderLoadTest):
    pass


# The receiver: limits (the loop counts and refuses), live changes, time-outs, bad input,
# DATA, stops.
class InProcessLimitTests(OnSelect, test_receiver.InProcessLimitTests):
    pass


class RealProcessLimitTests(OnSelect, test_receiver.RealProcessLimitTests):
    pass


class ApplyTests(OnSelect, test_receiver.ApplyTests):
    pass


class TimeoutTests(OnSelect, test_receiver.TimeoutTests):
    pass


class ErrorLimitTests(OnSelect, test_receiver.ErrorLimitTests):
    pass


class BadInputTests(OnSelect, test_receiver.BadInputTests):
    pass


class DataTests(OnSelect, test_receiver.DataTests):
    pass


class StopTests(OnSelect, test_receiver.StopTests):
    pass


# Hostile clients: talking before the greeting, pipelining, and a SIGKILL under STARTTLS +
# AUTH load (a worker's connection handed back to the loop after TLS).
class PipeliningTest(OnSelect, test_hostile.PipeliningTest):
    pass


class CrashWithTLSAndAuthTest(OnSelect, test_hostile.CrashWithTLSAndAuthTest):
    pass


# No acknowledged message lost under a SIGKILL, eight clients or one.
class CrashTest(OnSelect, test_crash.CrashTest):
    pass


# The load generator's one loop drives its sessions on select() too (Windows' only
# selector): connects refused and timed out, Ctrl+C, a real server, STARTTLS and AUTH.
class LoadTestWithoutISMailTest(OnSelect, test_loadtest.WithoutISMailTest):
    pass


class LoadTestAgainstISMailTest(OnSelect, test_loadtest.AgainstISMailTest):
    pass


class LoadTestTLSAndLoginTest(OnSelect, test_loadtest.TLSAndLoginTest):
    pass


if __name__ == "__main__":
    unittest.main()
