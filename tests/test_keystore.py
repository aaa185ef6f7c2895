"""The DKIM key store as the running server uses it: the key that signs, and a new key
made meanwhile by another program (``ismail dkim new`` while the server runs)."""
from __future__ import annotations

import os
import shutil
import tempfile
import unittest
from pathlib import Path

from ismail.mailauth.keystore import ACTIVE_FILE, KeyStore


class SigningKeyTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ismail-keys-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.server = KeyStore(self.dir)  # the running server's store

    def test_a_domain_without_a_key_signs_nothing(self) -> None:
        self.assertIsNone(self.server.signing_key("example.test"))

    def test_the_active_key_signs_and_names_are_case_blind(self) -> None:
        made = self.server.create("Example.TEST", bits=1024, selector="one")
        key = self.server.signing_key("example.test")
        self.assertEqual((key.selector, key.key.n), ("one", made.key.n))
        self.assertIs(self.server.signing_key("EXAMPLE.test"), key)  # remembered, not read again

    def test_a_key_made_by_another_program_signs_the_next_message(self) -> None:
        self.server.create("example.test", bits=1024, selector="one")
        self.assertEqual(self.server.signing_key("example.test").selector, "one")
        active = self.dir / "dkim" / "example.test" / ACTIVE_FILE
        before = os.stat(active)
        cli = KeyStore(self.dir)  # the command line, another process in real life
        made = cli.create("example.test", bits=1024, selector="two")
        # The same size and, as within one tick of a coarse file system clock, the same
        # times: only the file itself (replaced, not rewritten) tells the change.
        os.utime(active, ns=(before.st_atime_ns, before.st_mtime_ns))
        key = self.server.signing_key("example.test")
        self.assertEqual((key.selector, key.key.n), ("two", made.key.n))

    def test_a_broken_active_file_signs_nothing_and_a_fixed_one_signs_again(self) -> None:
        self.server.create("example.test", bits=1024, selector="one")
        active = self.dir / "dkim" / "example.test" / ACTIVE_FILE
        active.write_text("no-such-selector\n", encoding="ascii")
        with self.assertLogs("ismail.dkim", "ERROR"):
            self.assertIsNone(self.server.signing_key("example.test"))
        active.write_text("one\n", encoding="ascii")
        self.assertEqual(self.server.signing_key("example.test").selector, "one")


if __name__ == "__main__":
    unittest.main()
