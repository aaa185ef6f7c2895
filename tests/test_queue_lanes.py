"""The queue's lanes (queue/scheduler.py): due messages line up by next hop, and a
delivery thread takes several of one lane in one request.

What a user would check, with the real queue manager and spool of an in-process server
and only the network part (Sender.deliver_many) replaced by a recorder that answers
250 after a few milliseconds per message: a burst for the SmartHost goes out in
batches and each message exactly once; mail for hundreds of different domains each
goes once, and the threads' backlog never holds more than one job per waiting lane.
Nothing here opens a socket.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
import unittest
from pathlib import Path

from ismail.config import from_dict
from ismail.queue import scheduler
from ismail.queue.scheduler import QueueManager
from ismail.queue.transport import Result
from ismail.service import MailServer

DEADLINE = 30.0  # seconds for any wait here


class Recorder:
    """Sender.deliver_many's stand-in: every recipient takes the message after ``each``
    seconds; the batches, what each delivered, and the deepest backlog seen are kept."""

    def __init__(self, qm: QueueManager, each: float) -> None:
        self.qm, self.each = qm, each
        self.lock = threading.Lock()
        self.batches: list[int] = []
        self.delivered: list[int] = []  # the lane numbers in their subjects
        self.most_waiting = 0
        self.lane_jobs = 0

    def __call__(self, items, report=None):
        with self.lock:
            self.batches.append(len(items))
            self.most_waiting = max(self.most_waiting, self.qm.pool.waiting)
        out = []
        for index, (sender, rcpts, domain, data, smtputf8, body, sign) in enumerate(items):
            time.sleep(self.each)
            results = {r: Result(250, "250 2.0.0 Ok", "test") for r in rcpts}
            with self.lock:
                self.delivered.append(int(data.split(b"Subject: lane ", 1)[1].split(b"\r\n", 1)[0]))
            if report is not None:
                report(index, results)
            out.append(results)
        return out


class LaneTest(unittest.TestCase):
    def start(self, settings: dict, each: float) -> tuple[MailServer, QueueManager, Recorder]:
        folder = Path(tempfile.mkdtemp(prefix="ismail-lanes-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        base = {"server_name": "mx.example.test", "primary_domain": "example.test",
                "dkim": {"auto_keys": False}, "tls": {"self_signed": False},
                "listen": ["127.0.0.1:2525"], "outgoing": {"delivery_process": False}}
        for key, value in settings.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key].update(value)
            else:
                base[key] = value
        config, _ = from_dict(base)
        server = MailServer(config, folder)
        server.spool.prepare()
        self.addCleanup(server.spool.close)
        qm = QueueManager(server)
        recorder = Recorder(qm, each)
        qm.sender.deliver_many = recorder
        run_lane = qm._run_lane

        def counted(key) -> None:  # each delivery thread job for a lane
            with recorder.lock:
                recorder.lane_jobs += 1
            run_lane(key)
        qm._run_lane = counted
        qm.start()
        self.addCleanup(qm.stop, 2.0)
        return server, qm, recorder

    def send(self, server: MailServer, rcpt: str, n: int) -> int:
        text = f"From: <user@example.test>\r\nSubject: lane {n}\r\n\r\nbody {n}\r\n".encode()
        server.inject("user@example.test", [rcpt], text)
        return n

    def wait_empty(self, qm: QueueManager) -> None:
        deadline = time.monotonic() + DEADLINE
        while qm.entries() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(qm.entries(), [], "the queue did not empty")

    def test_a_burst_for_the_smarthost_goes_in_batches_each_message_once(self):
        server, qm, recorder = self.start(
            {"smarthost": {"enabled": True, "host": "127.0.0.1", "port": 9, "exclusive": True,
                           "tls": "none"}}, each=0.002)
        texts = [self.send(server, f"r{n}@remote{n % 7}.test", n) for n in range(120)]
        self.wait_empty(qm)
        self.assertEqual(sorted(recorder.delivered), sorted(texts), "each message exactly once")
        # Seven domains, one SmartHost: one lane; the messages waiting behind the first went
        # several per request, never more than LANE_BATCH.
        self.assertGreater(max(recorder.batches), 1, recorder.batches)
        self.assertLessEqual(max(recorder.batches), scheduler.LANE_BATCH)
        self.assertLess(len(recorder.batches), len(texts))

    def test_mail_for_many_domains_goes_once_each_without_piling_up_jobs(self):
        server, qm, recorder = self.start({"outgoing": {"max_connections": 5}}, each=0.02)
        texts = [self.send(server, f"someone@domain{n}.test", n) for n in range(300)]
        self.wait_empty(qm)
        self.assertEqual(sorted(recorder.delivered), sorted(texts))
        # One lane per domain, and most waited longer than LANE_PATIENCE for a thread; but a
        # lane gets another only when a thread is free, so the threads ran about one job
        # per lane (not one more for every lane at each look of the dispatcher).
        self.assertLessEqual(recorder.lane_jobs, len(texts) + 10)
        self.assertLessEqual(recorder.most_waiting, len(texts))
        self.assertEqual(qm._lanes, {}, "lanes left behind")


if __name__ == "__main__":
    unittest.main()
