"""Issue 12's crypto: our DER codec, RSA keys and signatures, and the self-signed
certificate, each checked by a program we did not write - OpenSSL (pkey -check,
dgst -verify, x509, verify -x509_strict) and Python's ssl module in a real TLS
handshake - and by keys OpenSSL made, imported into ours.  Bad key files of every
kind must give a ValueError that says what is wrong."""
from __future__ import annotations

import base64
import hashlib
import math
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

from ismail.mailauth import der, libcrypto, rsa, x509
from tests.support import require_program

UTC = timezone.utc


def pow_only() -> mock._patch:
    """Sign with Python's pow() even where CPython's OpenSSL is found."""
    return mock.patch.object(rsa, "_native_key", lambda key: None)


def run(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), input=data, capture_output=True, timeout=120)


def walk(element: der.Element) -> None:
    """Read every element of a DER tree with the reader its tag calls for."""
    if element.constructed:
        for child in element.children():
            walk(child)
        return
    reader = {der.BOOLEAN: element.as_boolean, der.INTEGER: element.as_integer, der.NULL: element.as_null,
              der.OID: element.as_oid, der.OCTET_STRING: element.as_octets, der.BIT_STRING: element.as_bit_string,
              der.UTF8_STRING: element.as_string, der.PRINTABLE_STRING: element.as_string,
              der.IA5_STRING: element.as_string, der.UTC_TIME: element.as_time,
              der.GENERALIZED_TIME: element.as_time}.get(element.tag)
    if reader is not None:
        reader()


class DerTest(unittest.TestCase):
    def test_integers_use_the_shortest_twos_complement(self) -> None:
        vectors = {0: "020100", 1: "020101", 127: "02017f", 128: "02020080", 255: "020200ff",
                   256: "02020100", -1: "0201ff", -128: "020180", -129: "0202ff7f", -256: "0202ff00",
                   65537: "0203010001", 2 ** 64: "0209010000000000000000"}
        for value, encoded in vectors.items():
            self.assertEqual(der.integer(value).hex(), encoded, value)
            self.assertEqual(der.decode(bytes.fromhex(encoded)).as_integer(), value)
        for n in [random.Random(7).getrandbits(b) * s for b in range(1, 300, 7) for s in (1, -1)]:
            self.assertEqual(der.decode(der.integer(n)).as_integer(), n)

    def test_known_encodings(self) -> None:
        self.assertEqual(der.oid("1.2.840.113549.1.1.1").hex(), "06092a864886f70d010101")
        self.assertEqual(der.oid("2.5.29.17").hex(), "0603551d11")
        self.assertEqual(der.oid("2.999.3").hex(), "0603883703")
        self.assertEqual(der.null().hex(), "0500")
        self.assertEqual(der.boolean(True).hex(), "0101ff")
        self.assertEqual(der.named_bits(0, 2, 5).hex(), "030202a4")  # keyUsage as OpenSSL writes it
        self.assertEqual(der.bit_string(b"\x01\x02").hex(), "0303000102")
        self.assertEqual(der.utc_time(datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)), b"\x17\x0d491231235959Z")
        self.assertEqual(der.generalized_time(datetime(2050, 1, 1, tzinfo=UTC)), b"\x18\x0f20500101000000Z")
        self.assertEqual(der.x509_time(datetime(2050, 1, 1, tzinfo=UTC))[0], der.GENERALIZED_TIME)
        self.assertEqual(der.x509_time(datetime(2049, 1, 1, tzinfo=UTC))[0], der.UTC_TIME)
        self.assertEqual(der.explicit(0, der.integer(2)).hex(), "a003020102")
        self.assertEqual(der.set_of(der.integer(5), der.integer(1)).hex(), "3106020101020105")
        self.assertEqual(der.octet_string(b"x" * 200)[:3].hex(), "0481c8")
        self.assertEqual(der.octet_string(b"x" * 300)[:4].hex(), "0482012c")

    def test_round_trips(self) -> None:
        when = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
        tree = der.sequence(der.boolean(False), der.oid("1.3.6.1.5.5.7.3.1"), der.octet_string(b"\x00\xff"),
                            der.utf8_string("Grüße"), der.printable_string("ISMail Ltd."), der.utc_time(when),
                            der.generalized_time(when.replace(year=2077)), der.explicit(3, der.null()),
                            der.set_of(der.ia5_string("a.test")), der.bit_string(b"\xa0", 5))
        items = der.decode(tree).sequence()
        self.assertFalse(items[0].as_boolean())
        self.assertEqual(items[1].as_oid(), "1.3.6.1.5.5.7.3.1")
        self.assertEqual(items[2].as_octets(), b"\x00\xff")
        self.assertEqual(items[3].as_string(), "Grüße")
        self.assertEqual(items[4].as_string(), "ISMail Ltd.")
        self.assertEqual(items[5].as_time(), when)
        self.assertEqual(items[6].as_time().year, 2077)
        self.assertTrue(items[7].is_context(3))
        items[7].children()[0].as_null()
        self.assertEqual(items[8].children()[0].as_string(), "a.test")
        self.assertEqual(items[9].as_bit_string(), (b"\xa0", 5))
        self.assertEqual(der.decode(der.utc_time(datetime(1999, 1, 1, tzinfo=UTC))).as_time().year, 1999)

    def test_malformed_input_is_a_value_error(self) -> None:
        bad = {
            "": "cut short", "02": "cut short", "0201": "cut short", "020200": "cut short",
            "0280": "indefinite", "3080020100 0000": "indefinite", "028101 01": "shortest",
            "02820001 01": "shortest", "0285ffffffffff": "out of range", "0284ffffffff00": "cut short",
            "020100 00": "trailing", "020200 01": "shortest", "0202ff80": "shortest", "0200": "no contents",
            "0101 01": "00 or FF", "0501 00": "contents", "0602 8001": "shortest", "0601 81": "cut short",
            "0300": "unused", "0301 01": "unused", "0302 01 01": "not zero", "0308 00": "cut short",
            "1f2001 00": "multi-byte", "1703 313233": "UTCTime", "170d 3939313333313233353935395a": "valid time",
            "0c02 c328": "not valid text", "1301 2a": "PrintableString", "3004 020100": "cut short",
        }
        for hexdata, words in bad.items():
            with self.subTest(hexdata), self.assertRaises(ValueError) as caught:
                walk(der.decode(bytes.fromhex(hexdata.replace(" ", ""))))
            self.assertIn(words.lower(), str(caught.exception).lower())
        with self.assertRaisesRegex(ValueError, "expected an INTEGER"):
            der.decode(der.null()).as_integer()
        with self.assertRaisesRegex(ValueError, "members"):
            der.decode(der.sequence()).sequence("an AlgorithmIdentifier", 1)
        for value in ("1", "3.1", "1.40", "a.b", "1.-2"):
            self.assertRaises(ValueError, der.oid, value)
        self.assertRaises(ValueError, der.printable_string, "a@b")
        self.assertRaises(ValueError, der.utc_time, datetime(2050, 1, 1, tzinfo=UTC))
        self.assertRaises(ValueError, der.utc_time, datetime(2030, 1, 1))  # no time zone

    def test_damaged_key_files_only_ever_raise_value_error(self) -> None:
        # Every truncation and many random byte changes of a real key: ValueError or a key,
        # never IndexError, TypeError, RecursionError...
        key_der = rsa.private_key_der(rsa.generate(1024))
        rnd = random.Random(12)
        samples = [key_der[:i] for i in range(len(key_der))]
        for _ in range(1500):
            damaged = bytearray(key_der)
            for _ in range(rnd.randint(1, 3)):
                damaged[rnd.randrange(len(damaged))] = rnd.randrange(256)
            samples.append(bytes(damaged))
        samples += [key_der + b"\x00", b"\x30" + bytes(rnd.randrange(256) for _ in range(50))]
        for sample in samples:
            try:
                walk(der.decode(sample))
            except ValueError:
                pass
            try:
                rsa.load_private_key(sample)
            except ValueError:
                pass


class RsaTest(unittest.TestCase):
    """Our keys and signatures against OpenSSL's, in both directions."""

    @classmethod
    def setUpClass(cls) -> None:
        started = time.perf_counter()
        cls.key = rsa.generate(2048)
        cls.generate_seconds = time.perf_counter() - started
        cls.key1024 = rsa.generate(1024)
        with mock.patch.object(libcrypto, "generate_pkcs1", side_effect=OSError("test: no OpenSSL")):
            cls.pow_key = rsa.generate(1099)  # made by rsa.py's own primes and pow()
        cls.dir = Path(tempfile.mkdtemp(prefix="ismail-rsa-"))
        cls.openssl_keys: dict[str, Path] = {}

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self) -> None:
        self.openssl = require_program(self, "openssl")

    def write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def openssl_ok(self, *args: str, data: bytes | None = None) -> bytes:
        r = run(self.openssl, *args, data=data)
        self.assertEqual(r.returncode, 0, f"openssl {' '.join(args)}: {r.stderr.decode(errors='replace')}")
        return r.stdout

    def openssl_key(self, kind: str) -> Path:
        """A key OpenSSL made: PKCS#8 PEM, PKCS#1 PEM, and the DER of each (made once)."""
        if kind not in self.openssl_keys:
            pem8 = self.dir / "openssl.pk8.pem"
            if not pem8.exists():
                self.openssl_ok("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pem8))
            args = {"pk8.pem": None, "pk1.pem": ("rsa", "-traditional"),
                    "pk8.der": ("pkey", "-outform", "DER"), "pk1.der": ("rsa", "-traditional", "-outform", "DER")}[kind]
            path = self.dir / f"openssl.{kind}"
            if args is not None:
                self.openssl_ok(*args, "-in", str(pem8), "-out", str(path))
            self.openssl_keys[kind] = path
        return self.openssl_keys[kind]

    # -- keys we make ------------------------------------------------------------------------
    def test_generated_keys_have_the_asked_size_and_consistent_numbers(self) -> None:
        self.assertLess(self.generate_seconds, 60, "2048-bit generation is far too slow")
        for key, bits in ((self.key, 2048), (self.key1024, 1024), (rsa.generate(1099), 1099),
                          (self.pow_key, 1099)):
            self.assertEqual((key.bits, key.e), (bits, 65537))
            self.assertEqual(key.p * key.q, key.n)
            self.assertNotEqual(key.p, key.q)
            self.assertGreater(abs(key.p - key.q), 1 << (bits // 2 - 100))
            self.assertTrue(rsa.is_probable_prime(key.p, 20) and rsa.is_probable_prime(key.q, 20))
            self.assertEqual(sorted((key.p.bit_length(), key.q.bit_length())), [bits // 2, (bits + 1) // 2])
            self.assertEqual(key.e * key.d % math.lcm(key.p - 1, key.q - 1), 1)
            self.assertEqual((key.dp, key.dq, key.qinv * key.q % key.p),
                             (key.d % (key.p - 1), key.d % (key.q - 1), 1))
        self.assertNotIn(str(self.key.d), repr(self.key))  # no private numbers in logs

    def test_sizes_outside_1024_to_4096_are_refused(self) -> None:
        for bits in (512, 1023, 4097, 8192, 0, -2048, True, "2048", 2048.0):
            with self.subTest(bits=bits), self.assertRaisesRegex(ValueError, "1024-4096 allowed"):
                rsa.generate(bits)

    def test_primality(self) -> None:
        primes = [2, 3, 5, 65537, 2 ** 127 - 1, 2 ** 521 - 1]
        composites = [0, 1, 4, 561, 41041, 3215031751, (2 ** 61 - 1) * (2 ** 89 - 1), 2 ** 128 + 1]
        self.assertTrue(all(rsa.is_probable_prime(p) for p in primes))
        self.assertFalse(any(rsa.is_probable_prime(c) for c in composites))

    def test_openssl_accepts_our_private_key_file(self) -> None:
        for key in (self.key, self.key1024):
            pem = rsa.private_key_to_pem(key)
            lines = pem.decode().splitlines()
            self.assertEqual((lines[0], lines[-1]), ("-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"))
            self.assertTrue(all(len(line) == 64 for line in lines[1:-2]), lines)
            path = self.write(f"ours{key.bits}.pem", pem)
            r = run(self.openssl, "pkey", "-in", str(path), "-check", "-noout")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(b"Key is valid", r.stdout + r.stderr)
            text = self.openssl_ok("pkey", "-in", str(path), "-noout", "-text").decode()
            self.assertIn(f"Private-Key: ({key.bits} bit, 2 primes)", text)
            self.assertEqual(rsa.load_private_key(pem), key)
            self.assertEqual(rsa.load_private_key(rsa.private_key_der(key)), key)

    def test_public_key_is_what_openssl_derives(self) -> None:
        path = self.write("pub-src.pem", rsa.private_key_to_pem(self.key))
        spki = self.openssl_ok("pkey", "-in", str(path), "-pubout", "-outform", "DER")
        self.assertEqual(rsa.public_key_der(self.key.public()), spki)
        self.assertEqual(rsa.public_key_to_pem(self.key.public()), self.openssl_ok("pkey", "-in", str(path), "-pubout"))
        self.assertEqual(rsa.load_public_key_der(spki), self.key.public())
        self.assertEqual(rsa.load_public_key(rsa.public_key_to_pem(self.key.public())), self.key.public())
        for junk in (b"", b"\x30\x00", spki[:-1], spki + b"\x00", rsa.private_key_der(self.key1024)):
            self.assertRaises(ValueError, rsa.load_public_key_der, junk)

    def test_openssl_verifies_our_signatures_and_rejects_changed_data(self) -> None:
        for key in (self.key, self.key1024):
            pub = self.write(f"pub{key.bits}.pem", rsa.public_key_to_pem(key.public()))
            data = self.write("data.bin", b"DKIM signs this, " + os.urandom(64))
            sig = self.write("data.sig", key.sign_sha256(data.read_bytes()))
            self.assertEqual(len(sig.read_bytes()), key.bits // 8)
            r = run(self.openssl, "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(b"Verified OK", r.stdout)
            data.write_bytes(data.read_bytes() + b".")
            r = run(self.openssl, "dgst", "-sha256", "-verify", str(pub), "-signature", str(sig), str(data))
            self.assertNotEqual(r.returncode, 0, r.stdout)

    def test_our_signature_is_byte_for_byte_openssls(self) -> None:
        # PKCS#1 v1.5 is deterministic: with the same key, blinding or not, the bytes must match.
        source = self.openssl_key("pk8.pem")
        modulus = self.openssl_ok("rsa", "-in", str(source), "-noout", "-modulus")
        data = os.urandom(300)
        theirs = self.openssl_ok("dgst", "-sha256", "-sign", str(source), data=data)
        for kind in ("pk8.pem", "pk1.pem", "pk8.der", "pk1.der"):
            key = rsa.load_private_key(self.openssl_key(kind).read_bytes())
            self.assertEqual(key.bits, 2048, kind)
            self.assertEqual(int(modulus.decode().split("=")[1], 16), key.n, kind)
            self.assertEqual(key.sign_sha256(data), theirs, kind)
            self.assertEqual(key.sign_digest_sha256(hashlib.sha256(data).digest()), theirs)
            self.assertTrue(key.public().verify_sha256(data, theirs))

    def test_verify_says_no_to_wrong_signatures(self) -> None:
        pub, data = self.key.public(), b"message"
        sig = self.key.sign_sha256(data)
        self.assertTrue(pub.verify_sha256(data, sig))
        flipped = bytes([sig[0] ^ 1]) + sig[1:]
        for bad_data, bad_sig in ((b"messagf", sig), (data, flipped), (data, sig[1:]), (data, b"\x00" + sig),
                                  (data, b""), (data, b"\xff" * len(sig)), (data, self.key1024.sign_sha256(data))):
            self.assertFalse(pub.verify_sha256(bad_data, bad_sig))
        self.assertFalse(self.key1024.public().verify_sha256(data, sig))

    def test_a_faulty_computation_never_leaves_as_a_signature(self) -> None:
        k = self.key1024
        broken = rsa.PrivateKey(k.n, k.e, k.d, k.p, k.q, k.dp ^ 2, k.dq, k.qinv)  # as a bit flip in memory would
        with pow_only(), self.assertRaisesRegex(RuntimeError, "own check"):
            broken.sign_sha256(b"x")
        # OpenSSL checks its CRT result with e and, on a mismatch, redoes it with d: the
        # signature it gives is then the right one, never one that would give away a prime.
        try:
            signature = broken.sign_sha256(b"x")
        except RuntimeError:
            return
        self.assertTrue(k.public().verify_sha256(b"x", signature))

    # -- the private operation in CPython's own OpenSSL (rsa.py falls back to pow()) --------------
    def test_the_ssl_modules_openssl_is_found_on_linux(self) -> None:
        # CI must exercise the fast path; a Windows build finds libcrypto-*.dll beside _ssl.pyd.
        if not sys.platform.startswith("linux"):
            self.skipTest("checked on Linux")
        self.assertIsNotNone(libcrypto.library(), "libcrypto of the ssl module not found")
        self.assertIsNotNone(rsa._native_key(self.key))

    def test_new_keys_come_from_openssl_on_linux(self) -> None:
        # pow() takes 0.4-1.2 s of CPU holding the GIL for a 2048-bit key; OpenSSL a tenth
        # of that outside it.  No prime of rsa.py's own may be looked for here.
        if not sys.platform.startswith("linux"):
            self.skipTest("checked on Linux")
        with mock.patch.object(rsa, "_random_prime", side_effect=AssertionError("pow() path taken")):
            key = rsa.generate(2048)
        self.assertEqual(key.bits, 2048)
        self.assertTrue(key.public().verify_sha256(b"a", key.sign_sha256(b"a")))

    def test_a_key_openssl_cannot_make_or_makes_wrong_is_made_with_pow(self) -> None:
        wrong_size = rsa._pkcs1_der(self.key1024)
        for failure in (mock.patch.object(libcrypto, "generate_pkcs1", side_effect=OSError("broken")),
                        mock.patch.object(libcrypto, "generate_pkcs1", return_value=wrong_size),
                        mock.patch.object(libcrypto, "generate_pkcs1", return_value=b"\x30\x03\x02\x01\x05")):
            with self.subTest(failure=failure), failure, self.assertLogs("ismail.dkim", "WARNING") as logs:
                key = rsa.generate(1024 + 8)
                self.assertEqual(key.bits, 1032)
                self.assertNotEqual(key.n, self.key1024.n)
                self.assertIn("using pow()", "\n".join(logs.output))

    def test_openssl_and_pow_give_the_same_bytes_for_every_size(self) -> None:
        for key in (self.key, self.key1024, rsa.generate(1099)):
            data = os.urandom(100)
            fast = key.sign_sha256(data)
            with pow_only():
                slow = key.sign_sha256(data)
            self.assertEqual(fast, slow, key.bits)
            self.assertTrue(key.public().verify_sha256(data, fast))

    def test_a_wrong_answer_from_the_library_falls_back_to_pow(self) -> None:
        key = rsa.generate(1024)

        class Liar:
            checked = False

            def private_op(self, block: bytes) -> bytes:
                return bytes(len(block) - 1) + b"\x07"

        rsa._native_keys[key] = Liar()
        with self.assertLogs("ismail.dkim", "WARNING") as logs:
            signature = key.sign_sha256(b"data")
        self.assertTrue(key.public().verify_sha256(b"data", signature))
        self.assertIn("failed the check", "\n".join(logs.output))
        self.assertIsNone(rsa._native_keys[key])  # not asked again for this key
        self.assertEqual(key.sign_sha256(b"data"), signature)

    def test_signing_from_many_threads_at_once(self) -> None:
        results: list[tuple[bytes, bytes]] = []
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(50):
                    data = os.urandom(40)
                    results.append((data, self.key.sign_sha256(data)))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 300)
        pub = self.key.public()
        self.assertTrue(all(pub.verify_sha256(d, s) for d, s in results))

    def test_ismail_rsa_python_turns_the_library_off(self) -> None:
        code = ("from ismail.mailauth import libcrypto, rsa; k = rsa.generate(1024); "
                "print(libcrypto.library(), rsa._native_key(k), k.public().verify_sha256(b'a', k.sign_sha256(b'a')))")
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "ISMAIL_RSA": "python"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ["None", "None", "True"])

    def test_signing_speed(self) -> None:
        for key, limit in ((self.key, 0.25), (self.key1024, 0.1)):
            started = time.perf_counter()
            for _ in range(10):
                key.sign_sha256(b"x" * 1000)
            self.assertLess((time.perf_counter() - started) / 10, limit, f"{key.bits}-bit signing is too slow")

    # -- files we must refuse --------------------------------------------------------------------
    def assert_refused(self, data: bytes, *words: str) -> str:
        with self.assertRaises(ValueError) as caught:
            rsa.load_private_key(data)
        message = str(caught.exception)
        for word in words:
            self.assertIn(word.lower(), message.lower(), message)
        return message

    def test_not_a_key_at_all(self) -> None:
        for junk in (b"", b"hello, I am not a key\n", os.urandom(200).replace(b"-", b"") + b"\x30",
                     b"\x30\x82\xff\xff\x02\x01", b"\x30\x03\x02\x01\x00", b"ssh-rsa AAAAB3NzaC1yc2E= me@host\n"):
            self.assert_refused(junk, "not")
        self.assert_refused(b"-----BEGIN PRIVATE KEY-----\nMIIB\n", "incomplete")
        self.assert_refused(b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", "damaged")
        self.assert_refused(rsa.public_key_to_pem(self.key.public()), "no private key", "PUBLIC KEY")
        self.assert_refused(rsa.public_key_der(self.key.public()), "public key")
        cert = x509.self_signed_certificate(self.key1024, "mx.example.test")
        self.assert_refused(cert, "CERTIFICATE")
        self.assert_refused(base64.b64decode(b"".join(cert.splitlines()[1:-1])), "certificate")

    def test_encrypted_keys_are_refused_with_the_way_out(self) -> None:
        pk8 = self.dir / "enc8.pem"
        self.openssl_ok("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-aes-256-cbc",
                        "-pass", "pass:secret", "-out", str(pk8))
        self.assertIn(b"ENCRYPTED PRIVATE KEY", pk8.read_bytes())
        self.assert_refused(pk8.read_bytes(), "encrypted", "password", "without")
        der_path = self.dir / "enc8.der"
        self.openssl_ok("pkcs8", "-topk8", "-in", str(pk8), "-passin", "pass:secret", "-passout", "pass:x",
                        "-outform", "DER", "-out", str(der_path))
        self.assert_refused(der_path.read_bytes(), "encrypted", "without")
        pk1 = self.dir / "enc1.pem"
        self.openssl_ok("rsa", "-in", str(pk8), "-passin", "pass:secret", "-traditional", "-aes128",
                        "-passout", "pass:secret", "-out", str(pk1))
        self.assertIn(b"Proc-Type: 4,ENCRYPTED", pk1.read_bytes())
        self.assert_refused(pk1.read_bytes(), "encrypted", "without")

    def test_keys_that_are_not_rsa(self) -> None:
        cases = {"ec.pem": (("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"), "EC key"),
                 "ed.pem": (("-algorithm", "ED25519"), "Ed25519"),
                 "pss.pem": (("-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:1024"), "PSS")}
        for name, (args, kind) in cases.items():
            path = self.dir / name
            self.openssl_ok("genpkey", *args, "-out", str(path))
            self.assert_refused(path.read_bytes(), kind, "not an RSA key")
            der_path = self.dir / (name + ".der")
            self.openssl_ok("pkey", "-in", str(path), "-outform", "DER", "-out", str(der_path))
            self.assert_refused(der_path.read_bytes(), kind, "not an RSA key")
        ec = self.dir / "ec.pem"
        sec1 = self.openssl_ok("ec", "-in", str(ec))  # "BEGIN EC PRIVATE KEY"
        self.assertIn(b"EC PRIVATE KEY", sec1)
        self.assert_refused(sec1, "an EC key", "not an RSA key")
        self.assert_refused(self.openssl_ok("ec", "-in", str(ec), "-outform", "DER"), "EC key", "not an RSA key")

    def test_sizes_outside_the_range(self) -> None:
        small = self.dir / "small.pem"
        self.openssl_ok("genrsa", "-out", str(small), "512")
        self.assert_refused(small.read_bytes(), "512 bits; 1024-4096 allowed")
        # Too long: the size is checked before anything else, so big numbers of no meaning do.
        n = (1 << 5000) + 12345
        huge = der.sequence(*(der.integer(v) for v in (0, n, 65537, 3, 5, 7, 11, 13, 17)))
        self.assert_refused(huge, "5001 bits; 1024-4096 allowed")

    def test_numbers_that_do_not_fit_together(self) -> None:
        k = self.key1024

        def pkcs1(**change: int) -> bytes:
            numbers = dict(n=k.n, e=k.e, d=k.d, p=k.p, q=k.q, dp=k.dp, dq=k.dq, qinv=k.qinv) | change
            return rsa.pem("RSA PRIVATE KEY", der.sequence(der.integer(0), *(der.integer(v) for v in numbers.values())))

        self.assertEqual(rsa.load_private_key(pkcs1()), k)
        self.assert_refused(pkcs1(p=k.p + 2), "do not fit", "p × q")
        self.assert_refused(pkcs1(d=k.d + 2), "do not fit", "e × d")
        self.assert_refused(pkcs1(e=k.e + 2), "do not fit")
        self.assert_refused(pkcs1(qinv=k.qinv + 1), "CRT")
        self.assert_refused(pkcs1(dp=k.dp + 1), "CRT")
        self.assert_refused(pkcs1(n=-k.n), "not valid")
        ten = rsa.pem("RSA PRIVATE KEY", der.sequence(*(der.integer(v) for v in (0, k.n, k.e, k.d, k.p, k.q))))
        self.assert_refused(ten, "9 numbers")
        self.assert_refused(rsa.pem("RSA PRIVATE KEY", der.sequence(der.integer(1), *(der.integer(3),) * 8)),
                            "two-prime")


class CertificateTest(unittest.TestCase):
    """The self-signed certificate, as OpenSSL and Python's ssl see it."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.key = rsa.generate(2048)
        cls.dir = Path(tempfile.mkdtemp(prefix="ismail-x509-"))
        cls.key_path = cls.dir / "key.pem"
        cls.key_path.write_bytes(rsa.private_key_to_pem(cls.key))

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self) -> None:
        self.openssl = require_program(self, "openssl")

    def cert(self, name: str, **kwargs) -> Path:
        path = self.dir / f"{name.replace(':', '_')}-{len(list(self.dir.iterdir()))}.pem"
        path.write_bytes(x509.self_signed_certificate(self.key, name, **kwargs))
        return path

    def openssl_text(self, path: Path) -> str:
        r = run(self.openssl, "x509", "-in", str(path), "-text", "-noout")
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.decode()

    def test_openssl_reads_every_field(self) -> None:
        now = datetime.now(UTC)
        text = self.openssl_text(self.cert("mx.example.test", now=now))
        for expected in ("Version: 3 (0x2)", "Signature Algorithm: sha256WithRSAEncryption",
                         "Issuer: O = ISMail, CN = mx.example.test", "Subject: O = ISMail, CN = mx.example.test",
                         "Public-Key: (2048 bit)", "DNS:mx.example.test", "CA:TRUE",
                         "Digital Signature, Key Encipherment, Certificate Sign",
                         "TLS Web Server Authentication", "X509v3 Subject Key Identifier",
                         "X509v3 Authority Key Identifier"):
            self.assertIn(expected, text)
        self.assertRegex(text, r"X509v3 Basic Constraints: critical")
        self.assertRegex(text, r"X509v3 Key Usage: critical")
        ski = re.search(r"Subject Key Identifier: *\n *([0-9A-F:]+)", text).group(1)
        aki = re.search(r"Authority Key Identifier: *\n *(?:keyid:)?([0-9A-F:]+)", text).group(1)
        self.assertEqual(ski, aki)
        dates = re.findall(r"Not (?:Before|After) *: (.+ GMT)", text)
        before, after = (datetime.strptime(d, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC) for d in dates)
        self.assertEqual(now.replace(microsecond=0) - before, timedelta(minutes=1))
        self.assertEqual(after - now.replace(microsecond=0), timedelta(days=3650))

    def test_openssl_verifies_it_as_its_own_root(self) -> None:
        path = self.cert("mx.example.test")
        for extra in ((), ("-x509_strict",), ("-purpose", "sslserver", "-verify_hostname", "mx.example.test")):
            r = run(self.openssl, "verify", *extra, "-CAfile", str(path), str(path))
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn(b"OK", r.stdout)
        # ...and the check can fail: another key's certificate for the same name is not trusted.
        other_key = rsa.generate(1024)
        other = self.dir / "other.pem"
        other.write_bytes(x509.self_signed_certificate(other_key, "mx.example.test"))
        r = run(self.openssl, "verify", "-CAfile", str(path), str(other))
        self.assertNotEqual(r.returncode, 0, r.stdout)

    def test_serials_are_random_positive_and_64_to_127_bits(self) -> None:
        serials = set()
        for _ in range(5):
            cert = x509.self_signed_certificate(self.key, "a.test")
            tbs = der.decode(base64.b64decode(b"".join(cert.splitlines()[1:-1]))).sequence()[0].sequence()
            serial = tbs[1].as_integer()
            self.assertTrue(64 <= serial.bit_length() <= 127, serial)
            serials.add(serial)
        self.assertEqual(len(serials), 5)

    def test_times_after_2049_are_generalized_time(self) -> None:
        now = datetime(2045, 6, 1, tzinfo=UTC)
        path = self.cert("mx.example.test", now=now, days=3650)
        parsed = self.openssl_ok_text("asn1parse", "-in", str(path))
        before = (now - timedelta(minutes=1)).strftime("%y%m%d%H%M%SZ")
        after = (now + timedelta(days=3650)).strftime("%Y%m%d%H%M%SZ")
        self.assertRegex(parsed, rf"UTCTIME +:{before}\s[\s\S]*GENERALIZEDTIME +:{after}\s")
        r = run(self.openssl, "verify", "-attime", str(int(datetime(2052, 1, 1, tzinfo=UTC).timestamp())),
                "-CAfile", str(path), str(path))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = run(self.openssl, "verify", "-CAfile", str(path), str(path))  # today: not yet valid
        self.assertNotEqual(r.returncode, 0)

    def openssl_ok_text(self, *args: str) -> str:
        r = run(self.openssl, *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout.decode()

    def test_ip_literals_get_an_ip_address_san(self) -> None:
        self.assertIn("IP Address:127.0.0.1", self.openssl_text(self.cert("127.0.0.1")))
        self.assertIn("IP Address:0:0:0:0:0:0:0:1", self.openssl_text(self.cert("::1")))
        long_name = ("a" * 60 + ".") * 2 + "example.test"
        text = self.openssl_text(self.cert(long_name))
        self.assertIn("DNS:" + long_name, text)
        self.assertIn("Subject: O = ISMail\n", text)  # a CN holds at most 64 characters
        for bad in ("", "two words", "a/b", "a,b"):
            self.assertRaises(ValueError, x509.self_signed_certificate, self.key, bad)

    def handshake(self, cert: Path, server_name: str, client_checks: str) -> str:
        """A real TLS handshake over loopback; the client trusts only ``cert``."""
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(str(cert), str(self.key_path))
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cadata=cert.read_text())
        self.assertTrue(client_ctx.check_hostname)
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        errors: list[BaseException] = []

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello " + tls.recv(100))
            except (OSError, ssl.SSLError) as e:
                errors.append(e)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=30) as raw:
                with client_ctx.wrap_socket(raw, server_hostname=client_checks) as tls:
                    tls.sendall(b"client")
                    subject = dict(x[0] for x in tls.getpeercert()["subject"])
                    return tls.recv(100).decode() + " " + subject["commonName"] + " " + tls.version()
        finally:
            thread.join(30)

    def test_python_ssl_serves_it_and_a_client_that_checks_the_name_accepts_it(self) -> None:
        cert = self.cert("mx.example.test")
        self.assertRegex(self.handshake(cert, "mx.example.test", "mx.example.test"),
                         r"^hello client mx\.example\.test TLSv1\.[23]$")
        ip_cert = self.cert("127.0.0.1")
        self.assertRegex(self.handshake(ip_cert, "127.0.0.1", "127.0.0.1"), r"^hello client 127\.0\.0\.1")
        # The client's checks are real: the wrong name is refused.
        with self.assertRaises(ssl.SSLCertVerificationError):
            self.handshake(cert, "mx.example.test", "other.example.test")


if __name__ == "__main__":
    unittest.main()
