"""ISMail's DKIM verifier (ismail.mailauth.dkim_verify) judged on signatures made by a real
signer: Debian's python3-dkim (dkimpy), through its dkimsign command, or through its library
(same interpreter, same code) where dkimsign has no option for the tag a case needs (l=, x=,
a chosen t=, a chosen h=).  Keys come from openssl (RSA) and dknewkey (Ed25519); a small
in-process resolver serves their key records.  ISMail's own signer must verify too."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

from ismail.mailauth import der, dkim, dkim_verify, rsa
from ismail.mailauth.dkim_verify import DkimResult, parse_tag_list, simple_body, verify_message
from ismail.queue.dns import DNSTemporaryError, NXDomain

IN_CI = os.environ.get("CI", "").lower() == "true"
SYSTEM_PYTHON = "/usr/bin/python3"
DOMAIN = "example.test"
TIMEOUT = 120
RFC8032_TEST1_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

# dkimpy's library, for the tags dkimsign cannot add: ``extra`` tags go in before h=
# (replacing dkimpy's own t= when given), via the one method that assembles the tags.
LIBRARY_SIGNER = r"""
import json, sys, dkim
job = json.loads(sys.argv[1])
message = sys.stdin.buffer.read()
signer = dkim.DKIM(message, signature_algorithm=job["alg"].encode())
extra = [(k.encode(), v.encode()) for k, v in job["extra"].items()]
assemble = signer.gen_header
def gen_header(fields, *args, **kwargs):
    fields = [f for f in fields if f[0] not in dict(extra)]
    at = [f[0] for f in fields].index(b"h")
    return assemble(fields[:at] + extra + fields[at:], *args, **kwargs)
signer.gen_header = gen_header
headers = [h.encode() for h in job["headers"]] if job["headers"] else None
sig = signer.sign(job["selector"].encode(), job["domain"].encode(), open(job["key"], "rb").read(),
                  canonicalize=(job["hcanon"].encode(), job["bcanon"].encode()),
                  include_headers=headers, length=job["length"])
sys.stdout.buffer.write(sig + message)
"""


def make_message(body: bytes = b"Hello, world.\r\n", extra: bytes = b"") -> bytes:
    return (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.net>\r\n"
            b"Subject: DKIM test\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\n"
            b"Message-ID: <1@example.test>\r\n" + extra + b"\r\n" + body)


class KeyServer:
    """The resolver verify_message is given: name -> TXT records, or an exception to raise."""

    def __init__(self) -> None:
        self.records: dict[str, list[str] | Exception] = {}
        self.asked: list[str] = []

    def txt(self, name: str) -> list[str]:
        self.asked.append(name)
        found = self.records.get(name.lower())
        if found is None:
            raise NXDomain(f"{name}: no such name")
        if isinstance(found, Exception):
            raise found
        return list(found)


def _run(test: unittest.TestCase, args: list[str], data: bytes = b"", cwd: str | None = None) -> bytes:
    done = subprocess.run(args, input=data, capture_output=True, timeout=TIMEOUT, cwd=cwd)
    if done.returncode != 0:
        test.fail(f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return done.stdout


class DkimVerifyTest(unittest.TestCase):
    tmp: Path
    server: KeyServer

    @classmethod
    def setUpClass(cls) -> None:
        problem = cls._missing_tools()
        if problem:
            if IN_CI:
                raise AssertionError(problem + " - CI=true, so this is a failure, not a skip")
            raise unittest.SkipTest(problem)
        cls.tmp = Path(tempfile.mkdtemp(prefix="ismail-dkimv-"))
        cls.records: dict[str, str] = {}
        for name, bits in (("rsa2048", 2048), ("rsa1024", 1024), ("rsa512", 512), ("other", 2048)):
            key = cls.tmp / f"{name}.pem"
            subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                            f"rsa_keygen_bits:{bits}", "-out", str(key)],
                           check=True, capture_output=True, timeout=TIMEOUT)
            der = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                                 check=True, capture_output=True, timeout=TIMEOUT).stdout
            cls.records[name] = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
        subprocess.run(["dknewkey", "--ktype", "ed25519", "ed"], cwd=cls.tmp, check=True,
                       capture_output=True, timeout=TIMEOUT)
        cls.records["ed"] = (cls.tmp / "ed.dns").read_text().strip()

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @staticmethod
    def _missing_tools() -> str:
        for program in ("dkimsign", "dknewkey", "openssl"):
            if shutil.which(program) is None:
                return f"{program} is not installed (python3-dkim, openssl: see .ci/run)"
        try:
            subprocess.run([SYSTEM_PYTHON, "-c", "import dkim, nacl.signing"], check=True,
                           capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return f"{SYSTEM_PYTHON} cannot import dkim and nacl (python3-dkim, python3-nacl)"
        return ""

    def setUp(self) -> None:
        self.server = KeyServer()
        for name, record in self.records.items():  # selector = key name
            self.server.records[f"{name}._domainkey.{DOMAIN}"] = [record]

    # -- signing -----------------------------------------------------------------------------

    def dkimsign(self, message: bytes, key: str = "rsa2048", *, alg: str = "rsa-sha256",
                 canon: str = "relaxed/relaxed", identity: str | None = None) -> bytes:
        hcanon, bcanon = canon.split("/")
        key_file = self.tmp / ("ed.key" if key == "ed" else f"{key}.pem")
        args = ["dkimsign", "--signalg", alg, "--hcanon", hcanon, "--bcanon", bcanon]
        args += ["--identity", identity] if identity else []
        signed = _run(self, args + [key, DOMAIN, str(key_file)], message)
        self.assertTrue(signed.startswith(b"DKIM-Signature:"), "dkimsign did not sign")
        return signed

    def library_sign(self, message: bytes, key: str = "rsa2048", *, alg: str = "rsa-sha256",
                     canon: str = "relaxed/relaxed", length: bool = False,
                     extra: dict[str, str] | None = None, headers: list[str] | None = None) -> bytes:
        hcanon, bcanon = canon.split("/")
        job = {"alg": alg, "selector": key, "domain": DOMAIN, "hcanon": hcanon, "bcanon": bcanon,
               "key": str(self.tmp / ("ed.key" if key == "ed" else f"{key}.pem")),
               "length": length, "extra": extra or {}, "headers": headers}
        signed = _run(self, [SYSTEM_PYTHON, "-c", LIBRARY_SIGNER, json.dumps(job)], message)
        self.assertTrue(signed.startswith(b"DKIM-Signature:"))
        return signed

    def verify(self, message: bytes, **kwargs) -> list[DkimResult]:
        return verify_message(message, self.server, **kwargs)

    def assertOne(self, message: bytes, result: str, reason: str = "", **kwargs) -> DkimResult:
        results = self.verify(message, **kwargs)
        self.assertEqual(len(results), 1, results)
        self.assertEqual(results[0].result, result, results[0])
        self.assertIn(reason, results[0].reason)
        return results[0]

    # -- passes ------------------------------------------------------------------------------

    def test_rsa_sha256_in_every_canonicalisation_passes(self) -> None:
        for canon in ("relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"):
            with self.subTest(canon):
                r = self.assertOne(self.dkimsign(make_message(), canon=canon), "pass")
                self.assertEqual((r.domain, r.selector, r.algorithm, r.identity, r.reason),
                                 (DOMAIN, "rsa2048", "rsa-sha256", "@" + DOMAIN, ""))
                self.assertGreaterEqual(len(r.header_b), 8)

    def test_ed25519_sha256_passes(self) -> None:
        for canon in ("relaxed/relaxed", "simple/simple"):
            with self.subTest(canon):
                r = self.assertOne(self.dkimsign(make_message(), "ed", alg="ed25519-sha256",
                                                 canon=canon), "pass")
                self.assertEqual(r.algorithm, "ed25519-sha256")

    def test_a_1024_bit_key_and_an_identity_pass(self) -> None:
        signed = self.dkimsign(make_message(), "rsa1024", identity="alice@mail.example.test")
        self.assertEqual(self.assertOne(signed, "pass").identity, "alice@mail.example.test")

    def test_8bit_body_passes(self) -> None:
        body = "Grüße aus Köln, 東京\r\n".encode() + b"latin-1 \xe9t\xe9 \xff\r\n"
        for canon in ("relaxed/relaxed", "simple/simple"):
            with self.subTest(canon):
                self.assertOne(self.dkimsign(make_message(body), canon=canon), "pass")

    def test_long_folded_headers_pass_and_refolding_breaks_only_simple(self) -> None:
        subject = b"Subject: " + b" ".join(b"word%d" % i for i in range(60))
        folded = re.sub(rb"(.{60,70}?) ", rb"\1\r\n\t ", subject)
        to = b"To: " + b",\r\n ".join(b"user%d@example.net" % i for i in range(30))
        message = make_message(extra=b"Cc: x@example.net\r\n").replace(
            b"Subject: DKIM test", folded).replace(b"To: Bob <bob@example.net>", to)
        for canon, refolded in (("relaxed/relaxed", "pass"), ("simple/simple", "fail")):
            with self.subTest(canon):
                signed = self.dkimsign(message, canon=canon)
                self.assertOne(signed, "pass")
                self.assertOne(signed.replace(b"\r\n\t word", b"\r\n  word", 1), refolded)

    def test_trailing_blank_lines_are_ignored(self) -> None:
        for canon in ("relaxed/relaxed", "simple/simple"):
            with self.subTest(canon):
                signed = self.dkimsign(make_message(b"text\r\n\r\n\r\n\r\n"), canon=canon)
                self.assertOne(signed, "pass")
                self.assertOne(signed + b"\r\n\r\n", "pass")
                self.assertOne(signed.rstrip(b"\r\n") + b"\r\n", "pass")

    def test_empty_body_passes(self) -> None:
        for canon in ("relaxed/relaxed", "simple/simple"):
            with self.subTest(canon):
                self.assertOne(self.dkimsign(make_message(b""), canon=canon), "pass")

    def test_a_10_mb_body_passes(self) -> None:
        line = b"0123456789 abcdefghij  klmnopqrst\tuvwxyz ABCDEFGHIJ KLMNOPQRST UVWXYZ \r\n"
        message = make_message(line * (10_000_000 // len(line)))
        for canon in ("relaxed/relaxed", "simple/simple"):
            with self.subTest(canon):
                signed = self.dkimsign(message, canon=canon)
                started = time.monotonic()
                self.assertOne(signed, "pass")
                self.assertLess(time.monotonic() - started, 30)
                self.assertOne(signed[:-100] + b"changed" + signed[-93:], "fail", "body hash")

    def test_ismails_own_signer_verifies(self) -> None:
        key = rsa.load_private_key((self.tmp / "rsa2048.pem").read_bytes())
        message = make_message(b"Signed by ISMail.\r\n  with   spaces \r\n\r\n")
        signed = dkim.sign(message, DOMAIN, "rsa2048", key) + message
        self.assertOne(signed, "pass")
        self.assertOne(signed.replace(b"Signed by", b"Signed  by"), "pass")  # relaxed body
        self.assertOne(signed.replace(b"Signed by", b"Signed bY"), "fail", "body hash")

    # -- fails -------------------------------------------------------------------------------

    def test_a_changed_header_fails(self) -> None:
        for key, alg in (("rsa2048", "rsa-sha256"), ("ed", "ed25519-sha256")):
            with self.subTest(alg):
                signed = self.dkimsign(make_message(), key, alg=alg)
                self.assertOne(signed.replace(b"Subject: DKIM test", b"Subject: DKIM tesT"),
                               "fail", "signature did not verify")

    def test_a_changed_body_fails_on_the_body_hash(self) -> None:
        signed = self.dkimsign(make_message(b"Pay 10 euros.\r\n"))
        self.assertOne(signed.replace(b"10 euros", b"99 euros"), "fail", "body hash did not verify")

    def test_a_second_from_breaks_the_oversigned_from(self) -> None:
        signed = self.dkimsign(make_message())
        self.assertIn(b"from : to", signed)  # dkimpy signs From twice
        forged = signed.replace(b"\r\n\r\n", b"\r\nFrom: Mallory <m@evil.test>\r\n\r\n", 1)
        self.assertOne(forged, "fail")

    def test_a_changed_signature_tag_fails(self) -> None:
        signed = self.dkimsign(make_message())
        self.assertOne(signed.replace(b"q=dns/txt;", b"q=dns/txt; ", 1), "pass")  # relaxed
        self.assertOne(signed.replace(b"i=@example.test", b"i=@Example.test", 1), "fail")
        signed = self.dkimsign(make_message(), canon="simple/simple")
        self.assertOne(signed, "pass")
        self.assertOne(signed.replace(b"q=dns/txt;", b"q=dns/txt; ", 1), "fail")

    # -- l=, x=, t= --------------------------------------------------------------------------

    def test_body_length_limit_is_honoured_and_reported(self) -> None:
        signed = self.library_sign(make_message(b"The signed part.\r\n"), length=True)
        self.assertIn(b"l=", signed)
        self.assertOne(signed, "pass", "l=18: 0 body bytes")
        appended = signed + b"Appended by someone else.\r\n"
        self.assertOne(appended, "pass", "l=18: 27 body bytes after it are not signed")
        self.assertOne(appended.replace(b"signed part", b"signed park"), "fail", "body hash")
        shortened = signed.replace(b"The signed part.\r\n", b"The\r\n")
        self.assertOne(shortened, "permerror", "l= is longer than the body")

    def test_expired_signature_is_a_permerror(self) -> None:
        now = int(time.time())
        signed = self.library_sign(make_message(), extra={"t": str(now - 7200), "x": str(now - 3600)})
        self.assertOne(signed, "permerror", "signature expired")
        self.assertOne(signed, "pass", now=now - 5000)

    def test_x_before_t_is_a_permerror(self) -> None:
        now = int(time.time())
        signed = self.library_sign(make_message(), extra={"t": str(now), "x": str(now - 10)})
        self.assertOne(signed, "permerror", "x= is before t=")

    def test_timestamp_in_the_future_is_a_permerror_beyond_the_skew(self) -> None:
        now = int(time.time())
        signed = self.library_sign(make_message(), extra={"t": str(now + 3600)})
        self.assertOne(signed, "permerror", "in the future")
        self.assertOne(signed, "pass", now=now + 3600 - dkim_verify.CLOCK_SKEW + 5)

    # -- keys and DNS ------------------------------------------------------------------------

    def test_revoked_key_is_a_permerror(self) -> None:
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = ["v=DKIM1; k=rsa; p="]
        self.assertOne(self.dkimsign(make_message()), "permerror", "revoked")

    def test_missing_key_is_a_permerror(self) -> None:
        del self.server.records[f"rsa2048._domainkey.{DOMAIN}"]
        self.assertOne(self.dkimsign(make_message()), "permerror", "no key")
        self.assertEqual(self.server.asked, [f"rsa2048._domainkey.{DOMAIN}"])
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = []  # the name, but no TXT
        self.assertOne(self.dkimsign(make_message()), "permerror", "no key")

    def test_dns_timeout_is_a_temperror(self) -> None:
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = DNSTemporaryError("timed out")
        self.assertOne(self.dkimsign(make_message()), "temperror", "timed out")

    def test_rsa_sha1_is_refused_by_policy_or_fails(self) -> None:
        signed = self.dkimsign(make_message(), alg="rsa-sha1")
        self.assertOne(signed, "policy", "RFC 8301")
        self.assertOne(signed.replace(b"Hello", b"Jello"), "fail", "body hash")
        self.assertOne(signed.replace(b"DKIM test", b"DKIM Test"), "fail", "signature did not")

    def test_a_512_bit_key_is_too_short(self) -> None:
        self.assertOne(self.dkimsign(make_message(), "rsa512"), "permerror", "key too short")

    def test_an_oversized_rsa_key_is_refused_before_any_arithmetic(self) -> None:
        for n, e in ((1 << 8200 | 1, 65537), ((1 << 2047) | 1, (1 << 100) + 1)):
            spki = der.sequence(der.sequence(der.oid(rsa.RSA_ENCRYPTION), der.null()),
                                der.bit_string(der.sequence(der.integer(n), der.integer(e))))
            self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = [
                "v=DKIM1; p=" + base64.b64encode(spki).decode()]
            self.assertOne(self.dkimsign(make_message()), "permerror", "key too large")

    def test_the_wrong_key_fails(self) -> None:
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = [self.records["other"]]
        self.assertOne(self.dkimsign(make_message()), "fail", "signature did not verify")

    def test_key_type_must_match_the_algorithm(self) -> None:
        self.server.records[f"ed._domainkey.{DOMAIN}"] = [self.records["rsa2048"]]
        self.assertOne(self.dkimsign(make_message(), "ed", alg="ed25519-sha256"),
                       "permerror", "does not match")

    def test_first_key_record_that_parses_is_used(self) -> None:
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = [
            "v=spf1 -all", "not a tag list", "v=DKIM1; p", self.records["rsa2048"], "v=DKIM1; p="]
        self.assertOne(self.dkimsign(make_message()), "pass")
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = ["v=DKIM2; p=abc", "garbage"]
        self.assertOne(self.dkimsign(make_message()), "permerror", "key record syntax")

    def test_key_record_restrictions(self) -> None:
        name, record = f"rsa2048._domainkey.{DOMAIN}", self.records["rsa2048"]
        signed = self.dkimsign(make_message(), identity="alice@mail.example.test")
        cases = [(record.replace("k=rsa;", "k=rsa; h=sha1;"), "permerror", "does not allow sha256"),
                 (record.replace("k=rsa;", "k=rsa; h=sha1:sha256;"), "pass", ""),
                 (record.replace("k=rsa;", "k=rsa; s=tlsrpt;"), "permerror", "not for email"),
                 (record.replace("k=rsa;", "k=rsa; s=email:tlsrpt;"), "pass", ""),
                 (record.replace("k=rsa;", "k=rsa; t=s;"), "permerror", "t=s"),
                 (record.replace("k=rsa;", "k=rsa; t=y;"), "pass", "testing"),
                 (record.replace("k=rsa;", "k=dsa;"), "permerror", "unknown key type"),
                 (record[:-20], "permerror", "key syntax error"),
                 (record.replace("k=rsa;", "k=rsa; k=rsa;"), "permerror", "duplicate tag")]
        for text, result, reason in cases:
            with self.subTest(text[:40]):
                self.server.records[name] = [text]
                self.assertOne(signed, result, reason)

    def test_a_bare_pkcs1_key_is_accepted(self) -> None:
        pem = (self.tmp / "rsa2048.pem").read_bytes()
        pkcs1 = subprocess.run(["openssl", "rsa", "-in", "/dev/stdin", "-RSAPublicKey_out",
                                "-outform", "DER"], input=pem, capture_output=True, check=True,
                               timeout=TIMEOUT).stdout
        self.server.records[f"rsa2048._domainkey.{DOMAIN}"] = [
            "v=DKIM1; p=" + base64.b64encode(pkcs1).decode()]
        self.assertOne(self.dkimsign(make_message()), "pass")

    # -- several signatures and limits -------------------------------------------------------

    def test_two_signatures_one_good_one_bad(self) -> None:
        signed = self.dkimsign(self.dkimsign(make_message()), "ed", alg="ed25519-sha256")
        no_point = (2).to_bytes(32, "little")  # no curve point has y = 2
        self.server.records[f"ed._domainkey.{DOMAIN}"] = [
            "v=DKIM1; k=ed25519; p=" + base64.b64encode(no_point).decode()]
        results = self.verify(signed)
        self.assertEqual([(r.selector, r.result) for r in results],
                         [("ed", "permerror"), ("rsa2048", "pass")])  # the key above is no point
        self.server.records[f"ed._domainkey.{DOMAIN}"] = [
            "v=DKIM1; k=ed25519; p=" + base64.b64encode(RFC8032_TEST1_PUBLIC).decode()]
        results = self.verify(signed)
        self.assertEqual([(r.selector, r.result) for r in results], [("ed", "fail"), ("rsa2048", "pass")])
        self.assertNotEqual(results[0].header_b, results[1].header_b)

    def test_too_many_signatures(self) -> None:
        signed = make_message()
        for _ in range(3):
            signed = self.dkimsign(signed)
        results = self.verify(signed, max_signatures=2)
        self.assertEqual([r.result for r in results], ["pass", "pass", "permerror"])
        self.assertEqual(results[2].reason, "too many signatures")

    def test_header_b_is_the_shortest_unique_start(self) -> None:
        short = dkim_verify._short_b
        values = ["abcdefgh1xyz", "abcdefgh2xyz", "zzzzzzzzzzzz"]
        self.assertEqual([short(v, values) for v in values], ["abcdefgh1", "abcdefgh2", "zzzzzzzz"])
        self.assertEqual(short("abcdefghij", ["abcdefghij", "abcdefghij"]), "abcdefgh")  # twins

    def test_no_signature_gives_no_results(self) -> None:
        self.assertEqual(self.verify(make_message()), [])
        self.assertEqual(self.server.asked, [])

    def test_max_body_bytes(self) -> None:
        signed = self.dkimsign(make_message(b"x" * 5000 + b"\r\n"))
        self.assertOne(signed, "neutral", "too large", max_body_bytes=1000)
        self.assertOne(signed, "pass", max_body_bytes=10000)

    def test_signature_tag_errors(self) -> None:
        signed = self.dkimsign(make_message(), identity="alice@example.test")
        cases = [(b"i=alice@example.test", b"i=alice@example.org", "i= is not within d="),
                 (b"v=1;", b"v=2;", "version"),
                 (b"v=1;", b"v=1; v=1;", "duplicate tag v="),
                 (b"a=rsa-sha256", b"a=rsa-md5", "unknown algorithm"),
                 (b"c=relaxed/relaxed", b"c=fancy/relaxed", "canonicalization"),
                 (b"q=dns/txt", b"q=http", "query method"),
                 (b"s=rsa2048", b"s=rsa2048; l=ten", "l= is not a number"),
                 (b"bh=", b"bh=*", "bh= is not valid base64"),
                 (b"d=example.test;", b"", "lacks d=")]
        for old, new, reason in cases:
            with self.subTest(new):
                self.assertIn(old, signed)
                self.assertOne(signed.replace(old, new, 1), "permerror", reason)
        unsigned_from = re.sub(rb"h=[^;]*", lambda m: m.group(0).replace(b"from", b"date"), signed)
        self.assertOne(unsigned_from, "permerror", "From is not signed")


class Canonicalisation(unittest.TestCase):
    """RFC 6376 §3.4.5's example, and the tag-list rules of §3.2."""

    EXAMPLE = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"

    def test_rfc_example_simple_body(self) -> None:
        start = self.EXAMPLE.index(b"\r\n\r\n") + 4
        self.assertEqual(b"".join(simple_body(self.EXAMPLE, start)), b" C \r\nD \t E\r\n")

    def test_simple_body_edges_and_pieces(self) -> None:
        for body, canonical in ((b"", b"\r\n"), (b"\r\n\r\n", b"\r\n"), (b"x", b"x\r\n"),
                                (b"x\r\n\r\n \r\n\r\n", b"x\r\n\r\n \r\n"), (b"a\r\r\n", b"a\r\r\n"),
                                (b"a\nb\n\n", b"a\r\nb\r\n")):
            with self.subTest(body):
                self.assertEqual(b"".join(simple_body(body)), canonical)
        body = b"".join(b"line %d\r\n" % i + b"\r\n" * (i % 4) for i in range(400)) + b"\r\n" * 9
        whole = b"".join(simple_body(body))
        self.assertEqual(whole, body.rstrip(b"\r\n") + b"\r\n")
        for size in (1, 7, 64, 1000):
            self.assertEqual(b"".join(simple_body(body, 0, size)), whole, size)

    def test_tag_lists(self) -> None:
        self.assertEqual(parse_tag_list(" v = 1 ;\r\n\ta=b c ; ;x=;"), {"v": "1", "a": "b c", "x": ""})
        for bad in ("v=1; v=2", "=1", "v", "1a=2", "v=\x01"):
            with self.subTest(bad), self.assertRaises(ValueError):
                parse_tag_list(bad)


if __name__ == "__main__":
    unittest.main()
