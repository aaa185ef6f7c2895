"""Tests for ismail.mailauth.srs: SRS0/SRS1 rewriting, checking, and interop with postsrsd."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse
from pathlib import Path

from ismail.mailauth.srs import SRS, SRSError
from tests.support import free_port, require_program

DAY = 86400
SECRET = b"correct horse battery staple"
OURS = "forward.example"
# A day whose stamp is "RA" (20000 % 1024 = 544 = 17 * 32 + 0), at noon.
NOON = 20000 * DAY + DAY // 2

SENDERS = [
    "alice@origin.test",
    "a=b@origin.test",
    "x=y==z=@origin.test",
    "user+tag@origin.test",
    "First.Last@Origin.TEST",
    "o'neil/dept{1}@sub.origin.test",
    "Ünï.cødé@bücher.test",
    "用户@例子.测试",
    "SRS0look-alike@origin.test",
    "srs2=x@origin.test",
    "bounce-" + "x" * 80 + "@" + "long." * 20 + "test",
]


class Clock:
    """A settable clock for SRS(..., clock=...)."""

    def __init__(self, now: float = NOON) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, days: float) -> None:
        self.now += days * DAY


def expected_hash(secret: bytes, *fields: str) -> str:
    """The hash as the paper and libsrs2 define it, written out independently."""
    data = "".join(fields).encode("utf-8").lower()
    return base64.b64encode(hmac.new(secret, data, hashlib.sha1).digest()).decode()[:4]


def ascii_upper(text: str) -> str:
    """Upper case as an MTA written in C would make it: ASCII letters only."""
    return text.encode("utf-8").upper().decode("utf-8")


class RoundTrip(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.srs = SRS(SECRET, OURS, clock=self.clock)

    def test_many_senders_round_trip(self) -> None:
        for sender in SENDERS:
            with self.subTest(sender=sender):
                rewritten = self.srs.forward(sender)
                local, _, host = rewritten.rpartition("@")
                self.assertEqual(host, OURS)
                self.assertRegex(local, r"^SRS0=[A-Za-z0-9+/]{4}=RA=")
                self.assertTrue(self.srs.is_srs(rewritten))
                self.assertEqual(self.srs.reverse(rewritten), sender)

    def test_exact_srs0_format(self) -> None:
        digest = expected_hash(SECRET, "RA", "origin.test", "alice")
        self.assertEqual(self.srs.forward("alice@origin.test"),
                         f"SRS0={digest}=RA=origin.test=alice@{OURS}")

    def test_hash_ignores_ascii_case(self) -> None:
        # The domain (and, as libsrs2 does, the local part) go into the HMAC lower-cased.
        upper = self.srs.forward("Alice@ORIGIN.test")
        lower = self.srs.forward("alice@origin.test")
        self.assertEqual(upper.split("=")[1], lower.split("=")[1])
        self.assertIn("=ORIGIN.test=Alice@", upper)

    def test_stamp_follows_the_day(self) -> None:
        stamps = set()
        for _ in range(40):
            stamps.add(self.srs.forward("a@origin.test").split("=")[2])
            self.clock.advance(1)
        self.assertEqual(len(stamps), 40)
        self.assertTrue(all(re.fullmatch("[A-Z2-7]{2}", s) for s in stamps), stamps)

    def test_case_changed_on_the_way_still_checks(self) -> None:
        rewritten = self.srs.forward("Alice@Origin.test")
        self.assertEqual(self.srs.reverse(rewritten.lower()), "alice@origin.test")
        self.assertEqual(self.srs.reverse(rewritten.upper()), "ALICE@ORIGIN.TEST")
        # Only ASCII letters are folded, as libsrs2 (C's tolower) does.
        rewritten = self.srs.forward("Ünï@bücher.test")
        self.assertEqual(self.srs.reverse(ascii_upper(rewritten)), "ÜNï@BüCHER.TEST")
        with self.assertRaises(SRSError):
            self.srs.reverse(rewritten.upper())

    def test_other_separators_accepted_on_input(self) -> None:
        rewritten = self.srs.forward("alice@origin.test")
        for sep in "+-":
            with self.subTest(sep=sep):
                self.assertEqual(self.srs.reverse("SRS0" + sep + rewritten[5:]), "alice@origin.test")

    def test_long_local_part_round_trips(self) -> None:
        sender = "a" * 60 + "@" + "b" * 60 + ".test"
        rewritten = self.srs.forward(sender)
        self.assertGreater(len(rewritten.rpartition("@")[0]), 64)
        self.assertEqual(self.srs.reverse(rewritten), sender)

    def test_our_domain_in_any_case_or_form(self) -> None:
        srs = SRS(SECRET, "bücher.test", clock=self.clock)
        rewritten = srs.forward("a@origin.test")
        for domain in ("BÜCHER.test", "xn--bcher-kva.test", "bücher.test."):
            with self.subTest(domain=domain):
                self.assertEqual(srs.reverse(rewritten.rpartition("@")[0] + "@" + domain), "a@origin.test")
                self.assertEqual(srs.forward("x@" + domain), "x@" + domain)


class LeftAlone(unittest.TestCase):
    def setUp(self) -> None:
        self.srs = SRS(SECRET, OURS, clock=Clock())

    def test_null_sender(self) -> None:
        self.assertEqual(self.srs.forward(""), "")

    def test_our_own_domain(self) -> None:
        for sender in (f"bob@{OURS}", "bob@FORWARD.Example", f"SRS0=abcd=AB=x.test=y@{OURS}"):
            with self.subTest(sender=sender):
                self.assertEqual(self.srs.forward(sender), sender)

    def test_senders_that_cannot_be_rewritten(self) -> None:
        for sender in ('"a b"@origin.test', '"a@b"@origin.test', 'a..b@origin.test',
                       "postmaster", "user@[192.0.2.1]", "user@"):
            with self.subTest(sender=sender):
                self.assertEqual(self.srs.forward(sender), sender)

    def test_quoted_dot_atom_is_rewritten_plain(self) -> None:
        rewritten = self.srs.forward('"abc.def"@origin.test')
        self.assertNotIn('"', rewritten)
        self.assertEqual(self.srs.reverse(rewritten), "abc.def@origin.test")


class Refused(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.srs = SRS(SECRET, OURS, clock=self.clock)
        self.good = self.srs.forward("alice@origin.test")

    def refused(self, address: str, words: str) -> None:
        with self.assertRaises(SRSError) as caught:
            self.srs.reverse(address)
        self.assertIsInstance(caught.exception, ValueError)
        self.assertIn(words, str(caught.exception))

    def test_forged_hash(self) -> None:
        digest = self.good.split("=")[1]
        other = "AAAA" if digest.upper() != "AAAA" else "BBBB"
        self.refused(self.good.replace(digest, other, 1), "does not match")

    def test_changed_original(self) -> None:
        self.refused(self.good.replace("alice@", "mallory@"), "does not match")
        self.refused(self.good.replace("origin.test", "evil.test"), "does not match")

    def test_hash_from_another_secret(self) -> None:
        theirs = SRS(b"another secret", OURS, clock=self.clock).forward("alice@origin.test")
        self.refused(theirs, "does not match")

    def test_not_srs(self) -> None:
        for address in (f"alice@{OURS}", f"SRS2=abcd=RA=x.test=y@{OURS}", f"SRS0@{OURS}",
                        f"SRS0x@{OURS}", "SRS0=abcd=RA=x.test=y", "",
                        f'"SRS0=abcd=RA=o.test=a b"@{OURS}'):
            with self.subTest(address=address):
                self.refused(address, "not an SRS address")

    def test_other_domain(self) -> None:
        self.refused(self.good.replace(OURS, "elsewhere.test"), f"not an SRS address of {OURS}")

    def test_malformed(self) -> None:
        for local in ("SRS0=", "SRS0=abcd", "SRS0=abcd=RA", "SRS0=abcd=RA=origin.test",
                      "SRS0=abcd=RA=origin.test=", "SRS0==RA=origin.test=a",
                      "SRS0=abcd==origin.test=a", "SRS1=abcd", "SRS1=abcd=first.test",
                      "SRS1=abcd==x", "SRS0=abcd=RA=o=a@b"):
            with self.subTest(local=local):
                self.refused(f"{local}@{OURS}", "malformed")

    def test_bad_stamp_or_hash_shape(self) -> None:
        digest, stamp = self.good.split("=")[1:3]
        self.refused(self.good.replace(f"={stamp}=", "=R1=", 1), "malformed SRS timestamp")
        self.refused(self.good.replace(f"={stamp}=", "=RAA=", 1), "malformed SRS timestamp")
        self.refused(self.good.replace(digest, digest + "x", 1), "malformed SRS hash")
        self.refused(self.good.replace(digest, "ÄÄÄÄ", 1), "malformed SRS hash")

    def test_srs1_forged(self) -> None:
        srs1 = self.srs.forward("SRS0=abcd=RA=origin.test=alice@first.test")
        self.assertEqual(self.srs.reverse(srs1), "SRS0=abcd=RA=origin.test=alice@first.test")
        self.refused(srs1.replace("first.test", "other.test"), "does not match")
        self.refused(srs1.replace("=alice@", "=bob@"), "does not match")


class Age(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.srs = SRS(SECRET, OURS, max_age_days=21, clock=self.clock)

    def test_accepted_to_max_age_then_expired(self) -> None:
        rewritten = self.srs.forward("alice@origin.test")
        self.clock.advance(21)
        self.assertEqual(self.srs.reverse(rewritten), "alice@origin.test")
        self.clock.advance(1)
        with self.assertRaisesRegex(SRSError, r"expired \(22 days old, 21 allowed\)"):
            self.srs.reverse(rewritten)

    def test_days_not_seconds(self) -> None:
        self.clock.now = 20000 * DAY  # made at the very start of a day ...
        rewritten = self.srs.forward("alice@origin.test")
        self.clock.now = 20022 * DAY - 1  # ... still good at the very end of the 21st after
        self.assertEqual(self.srs.reverse(rewritten), "alice@origin.test")

    def test_future_stamps(self) -> None:
        rewritten = self.srs.forward("alice@origin.test")
        self.clock.advance(-1)  # one day ahead of the clock: the clock was set back
        self.assertEqual(self.srs.reverse(rewritten), "alice@origin.test")
        self.clock.advance(-1)
        with self.assertRaisesRegex(SRSError, "expired"):
            self.srs.reverse(rewritten)

    def test_across_the_1024_day_wrap(self) -> None:
        self.clock.now = (1024 * 20 + 1020) * DAY + 100  # stamp 1020: "74"
        rewritten = self.srs.forward("alice@origin.test")
        self.assertEqual(rewritten.split("=")[2], "74")
        self.clock.advance(9)  # day 1029, stamp 5
        self.assertEqual(self.srs.reverse(rewritten), "alice@origin.test")
        self.clock.advance(13)  # 22 days
        with self.assertRaisesRegex(SRSError, "22 days old"):
            self.srs.reverse(rewritten)
        self.clock.now = (1024 * 21) * DAY  # stamp 0 a day ahead of stamp 1023
        ahead = self.srs.forward("alice@origin.test")
        self.clock.advance(-1)
        self.assertEqual(self.srs.reverse(ahead), "alice@origin.test")

    def test_max_age_setting(self) -> None:
        srs = SRS(SECRET, OURS, max_age_days=3, clock=self.clock)
        rewritten = srs.forward("alice@origin.test")
        self.clock.advance(3)
        self.assertEqual(srs.reverse(rewritten), "alice@origin.test")
        self.clock.advance(1)
        with self.assertRaisesRegex(SRSError, "4 days old, 3 allowed"):
            srs.reverse(rewritten)

    def test_bad_settings(self) -> None:
        for kwargs in ({"secret": b""}, {"max_age_days": -1}, {"max_age_days": 1023},
                       {"domain": ""}, {"domain": "a=b.test"}):
            with self.subTest(kwargs=kwargs):
                args = {"secret": SECRET, "domain": OURS, **kwargs}
                with self.assertRaises(ValueError):
                    SRS(**args)


class Chain(unittest.TestCase):
    """Forwarders one after another: the address grows once, each step reverses to the last."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.first = SRS(b"first secret", "first.test", clock=self.clock)
        self.second = SRS(b"second secret", "second.test", clock=self.clock)
        self.third = SRS(b"third secret", "third.test", clock=self.clock)

    def test_srs0_becomes_srs1_and_comes_back(self) -> None:
        original = "Alice=Smith@origin.test"
        srs0 = self.first.forward(original)
        srs1 = self.second.forward(srs0)
        rest = srs0.rpartition("@")[0][4:]  # "=HHHH=TT=origin.test=Alice=Smith"
        digest = expected_hash(b"second secret", "first.test", rest)
        self.assertEqual(srs1, f"SRS1={digest}=first.test={rest}@second.test")
        self.assertIn("=first.test==", srs1)
        self.assertEqual(self.second.reverse(srs1), srs0)
        self.assertEqual(self.first.reverse(self.second.reverse(srs1)), original)

    def test_srs1_rewritten_again_keeps_its_original_part(self) -> None:
        original = "alice@origin.test"
        srs0 = self.first.forward(original)
        srs1 = self.second.forward(srs0)
        again = self.third.forward(srs1)
        self.assertEqual(again.partition("=first.test=")[2].rpartition("@")[0],
                         srs1.partition("=first.test=")[2].rpartition("@")[0])
        self.assertTrue(again.endswith("@third.test"))
        self.assertNotEqual(again.split("=")[1], srs1.split("=")[1])
        self.assertEqual(self.third.reverse(again), srs0)
        self.assertEqual(self.first.reverse(self.third.reverse(again)), original)
        with self.assertRaises(SRSError):  # the second forwarder's key does not fit it
            self.second.reverse(again.replace("@third.test", "@second.test"))

    def test_srs0_with_another_separator(self) -> None:
        srs0 = self.first.forward("alice@origin.test").replace("SRS0=", "srs0+", 1)
        srs1 = self.second.forward(srs0)
        self.assertIn("=first.test=+", srs1)
        back = self.second.reverse(srs1)
        self.assertEqual(back.lower(), srs0.lower())
        self.assertEqual(self.first.reverse(back), "alice@origin.test")

    def test_damaged_srs1_of_another_is_wrapped_as_srs0(self) -> None:
        sender = "SRS1=abcd@elsewhere.test"
        rewritten = self.second.forward(sender)
        self.assertTrue(rewritten.startswith("SRS0="), rewritten)
        self.assertEqual(self.second.reverse(rewritten), sender)


class IsSrs(unittest.TestCase):
    def test_prefixes(self) -> None:
        srs = SRS(SECRET, OURS)
        yes = ["SRS0=a@x", "srs0+a@x", "Srs1-a@x", "SRS1=a", "SRS0=h=t=d=l@anywhere.test"]
        no = ["SRS0@x", "SRS0a=b@x", "SRS2=a@x", "alice@x", "", "SRS@x", "xSRS0=a@x"]
        for address in yes:
            self.assertTrue(srs.is_srs(address), address)
        for address in no:
            self.assertFalse(srs.is_srs(address), address)


def _tcp_table_encode(text: str) -> str:
    # Postfix's tcp_table protocol: %XX for spaces, controls, '%' and non-ASCII (as UTF-8).
    return "".join(chr(b) if 33 <= b <= 126 and b != 37 else f"%{b:02x}" for b in text.encode("utf-8"))


class PostsrsdInterop(unittest.TestCase):
    """Byte for byte what postsrsd (libsrs2's algorithm) writes, and each reverses the other's."""

    DOMAIN = "relay.test"
    SECRET = b"interop-secret-0123456789"

    def setUp(self) -> None:
        program = require_program(self, "postsrsd", "/usr/sbin/postsrsd")
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        secret_file = Path(tmp.name) / "secret"
        secret_file.write_bytes(self.SECRET + b"\n")
        self.fport, self.rport = free_port(), free_port()
        while self.rport == self.fport:
            self.rport = free_port()
        proc = subprocess.Popen([program, f"-s{secret_file}", f"-d{self.DOMAIN}", "-l127.0.0.1", "-4",
                                 f"-f{self.fport}", f"-r{self.rport}", "-t10"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(self._stop, proc)
        deadline = time.monotonic() + 15
        for port in (self.fport, self.rport):
            while True:
                if proc.poll() is not None:
                    self.fail(f"postsrsd ended ({proc.returncode}): {proc.stdout.read()!r}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        self.fail(f"postsrsd does not listen on port {port}")
                    time.sleep(0.05)
        self.srs = SRS(self.SECRET, self.DOMAIN)

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    def ask(self, port: int, address: str) -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"get " + _tcp_table_encode(address).encode("ascii") + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        code, _, text = answer.decode("ascii").strip().partition(" ")
        return int(code), urllib.parse.unquote(text)

    def theirs_forward(self, sender: str) -> str:
        code, text = self.ask(self.fport, sender)
        self.assertEqual(code, 200, text)
        return text

    def assert_same_forward(self, sender: str) -> str:
        before = self.srs.forward(sender)
        theirs = self.theirs_forward(sender)
        after = self.srs.forward(sender)  # the day may turn between the two
        self.assertIn(theirs, (before, after))
        return theirs

    def test_srs0_identical_and_each_reverses_the_other(self) -> None:
        for sender in ["alice@origin.test", "a=b+c@Origin.TEST", "Ünï.cødé@bücher.test",
                       "bounce-" + "x" * 70 + "@lists.origin.test"]:
            with self.subTest(sender=sender):
                theirs = self.assert_same_forward(sender)
                self.assertEqual(self.srs.reverse(theirs), sender)
                self.assertEqual(self.srs.reverse(ascii_upper(theirs)), ascii_upper(sender))
                self.assertEqual(self.ask(self.rport, self.srs.forward(sender)), (200, sender))

    def test_srs1_identical_and_each_reverses_the_other(self) -> None:
        first = SRS(b"first", "first.test")
        srs0 = first.forward("alice@origin.test")
        srs1 = self.assert_same_forward(srs0)
        self.assertTrue(srs1.startswith("SRS1="), srs1)
        self.assertEqual(self.srs.reverse(srs1), srs0)
        self.assertEqual(self.ask(self.rport, srs1), (200, srs0))
        other_srs1 = SRS(b"second", "second.test").forward(srs0)
        again = self.assert_same_forward(other_srs1)
        self.assertEqual(self.ask(self.rport, again), (200, srs0))
        self.assertEqual(self.srs.reverse(again), srs0)

    def test_same_refusals(self) -> None:
        self.assertEqual(self.assert_same_forward(f"bob@{self.DOMAIN}"), f"bob@{self.DOMAIN}")
        forged = SRS(b"another secret", self.DOMAIN).forward("alice@origin.test")
        self.assertEqual(self.ask(self.rport, forged)[0], 500)
        with self.assertRaises(SRSError):
            self.srs.reverse(forged)


if __name__ == "__main__":
    unittest.main()
