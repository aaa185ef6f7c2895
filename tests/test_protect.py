"""The SmartHost password at rest: DPAPI on Windows (exercised here with stand-ins for
crypt32/kernel32), owner-only file elsewhere."""
import ctypes
import json
import os
import shutil
import stat
import tempfile
import unittest
from pathlib import Path

from ismail import config
from ismail.platform.protect import PREFIX, ProtectError, protect, unprotect


class FakeCrypt32:
    """Behaves like crypt32's two calls: reads the input blob, fills the output blob."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.buffers = []

    def _run(self, src_ref, out_ref, transform):
        if self.fail:
            return 0
        src, out = src_ref._obj, out_ref._obj
        result = transform(ctypes.string_at(src.pbData, src.cbData))
        buf = ctypes.create_string_buffer(result, len(result))
        self.buffers.append(buf)
        out.cbData = len(result)
        out.pbData = ctypes.cast(buf, type(out.pbData))
        return 1

    def CryptProtectData(self, src, descr, entropy, reserved, prompt, flags, out):
        assert flags == 1  # CRYPTPROTECT_UI_FORBIDDEN: never a dialog from a server
        return self._run(src, out, lambda b: b"SEALED" + bytes(x ^ 0x5A for x in b))

    def CryptUnprotectData(self, src, descr, entropy, reserved, prompt, flags, out):
        def open_(b):
            if not b.startswith(b"SEALED"):
                raise AssertionError("not ours")
            return bytes(x ^ 0x5A for x in b[6:])
        return self._run(src, out, open_)


class FakeKernel32:
    def __init__(self):
        self.freed = 0

    def LocalFree(self, ptr):
        self.freed += 1


class ProtectTest(unittest.TestCase):
    def test_windows_path_round_trips_and_frees_memory(self):
        crypt, kernel = FakeCrypt32(), FakeKernel32()
        stored = protect("s3cr\u00eat pw", crypt, kernel)
        self.assertTrue(stored.startswith(PREFIX))
        self.assertNotIn("s3cr", stored)
        self.assertEqual(unprotect(stored, crypt, kernel), "s3cr\u00eat pw")
        self.assertEqual(kernel.freed, 2)

    def test_windows_failure_is_reported(self):
        with self.assertRaises(ProtectError):
            protect("pw", FakeCrypt32(fail=True), FakeKernel32())

    def test_posix_twin_keeps_the_text_and_refuses_foreign_blobs(self):
        if os.name == "nt":
            self.skipTest("POSIX behaviour")
        self.assertEqual(protect("pw"), "pw")
        self.assertEqual(unprotect("pw"), "pw")
        with self.assertRaises(ProtectError):
            unprotect(PREFIX + "AAAA")

    def test_settings_file_is_owner_only_and_a_foreign_blob_is_a_clear_error(self):
        d = Path(tempfile.mkdtemp(prefix="ismail-protect-"))
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        path = d / "ismail.json"
        s = config.Settings(server_name="mx.example.test")
        s.smarthost.enabled, s.smarthost.host = True, "relay.example.net"
        s.smarthost.authenticate, s.smarthost.account, s.smarthost.password = True, "me", "pw1"
        config.save(s, path)
        if os.name != "nt":
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(config.load(path)[0].smarthost.password, "pw1")
        data = json.loads(path.read_text())
        data["smarthost"]["password"] = PREFIX + "AQIDBA=="
        path.write_text(json.dumps(data))
        if os.name != "nt":
            with self.assertRaises(config.ConfigError) as ctx:
                config.load(path)
            self.assertIn("smarthost.password", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
