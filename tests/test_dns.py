"""Tests of ismail.dns: against a real dnsmasq on loopback, and against a tiny fake server of
our own (hand-built packets) for what dnsmasq cannot be made to do: truncation, SERVFAIL,
spoofed and malformed replies, counting packets for the cache."""
from __future__ import annotations

import ctypes
import functools
import ipaddress
import select
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from ismail.queue import dns
from ismail.queue.dns import DNSError, DNSTemporaryError, MXRecord, NXDomain, Resolver, parse_server, system_nameservers
from tests.support import Dnsmasq, require_program

A, CNAME, SOA, MX, AAAA = 1, 5, 6, 15, 28


# ---------------------------------------------------------------- hand-built packets

def wire(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label) + b"\0"


def rr(owner: str | bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    """A resource record; owner as text, or as raw bytes (e.g. a compression pointer)."""
    head = owner if isinstance(owner, bytes) else wire(owner)
    return head + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def mx_rdata(pref: int, host: str) -> bytes:
    return struct.pack("!H", pref) + wire(host)


def soa_rdata(minimum: int) -> bytes:
    return wire("ns.test") + wire("hostmaster.test") + struct.pack("!IIIII", 1, 7200, 900, 86400, minimum)


@dataclass
class Query:
    qid: int
    flags: int
    qdcount: int
    name: str
    qtype: int
    question: bytes  # the raw question section, echoed in replies


def parse_query(data: bytes) -> Query:
    qid, flags, qd = struct.unpack_from("!HHH", data)
    off, labels = 12, []
    while data[off]:
        labels.append(data[off + 1:off + 1 + data[off]].decode())
        off += 1 + data[off]
    qtype = struct.unpack_from("!H", data, off + 1)[0]
    return Query(qid, flags, qd, ".".join(labels), qtype, data[12:off + 5])


def reply(q: Query, answers=(), authority=(), rcode: int = 0, tc: bool = False, qid: int | None = None) -> bytes:
    flags = 0x8180 | rcode | (0x0200 if tc else 0)
    head = struct.pack("!HHHHHH", q.qid if qid is None else qid, flags, 1, len(answers), len(authority), 0)
    return head + q.question + b"".join(answers) + b"".join(authority)


class FakeDNS:
    """A DNS server on loopback (UDP and TCP on one port) answering via handler(query, via).

    handler returns a list of packets; ("spoof", packet) is sent from another port."""

    def __init__(self, handler, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.handler, self.host = handler, host
        self.queries: list[tuple[str, Query, tuple]] = []
        self.errors: list[BaseException] = []
        for _ in range(20):  # find a port free for both UDP and TCP
            self.udp = socket.socket(family, socket.SOCK_DGRAM)
            self.udp.bind((host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(5)
        self.spoof = socket.socket(family, socket.SOCK_DGRAM)
        self.spoof.bind((host, 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def server(self) -> tuple[str, int]:
        return (self.host, self.port)

    def count(self, via: str = "udp") -> int:
        return sum(1 for v, _, _ in self.queries if v == via)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.05)
                for sock in ready:
                    if sock is self.udp:
                        data, source = self.udp.recvfrom(4096)
                        q = parse_query(data)
                        self.queries.append(("udp", q, source))
                        for packet in self.handler(q, "udp"):
                            if isinstance(packet, tuple):
                                self.spoof.sendto(packet[1], source)
                            else:
                                self.udp.sendto(packet, source)
                    else:
                        conn, source = self.tcp.accept()
                        with conn:
                            conn.settimeout(2)
                            data = b""
                            while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
                                chunk = conn.recv(4096)
                                if not chunk:
                                    break
                                data += chunk
                            q = parse_query(data[2:])
                            self.queries.append(("tcp", q, source))
                            for packet in self.handler(q, "tcp"):
                                conn.sendall(struct.pack("!H", len(packet)) + packet)
            except Exception as e:  # kept for the test to see; the server goes on
                self.errors.append(e)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in (self.udp, self.tcp, self.spoof):
            sock.close()


def zone(records: dict):
    """A handler answering from {(name, type): [(ttl, rdata), ...]}; other names NXDOMAIN."""
    def handler(q: Query, via: str):
        names = {name for name, _ in records}
        if (q.name, q.qtype) in records:
            return [reply(q, [rr(q.name, q.qtype, ttl, data) for ttl, data in records[(q.name, q.qtype)]])]
        if (q.name, CNAME) in records:
            return [reply(q, [rr(q.name, CNAME, ttl, data) for ttl, data in records[(q.name, CNAME)]])]
        return [reply(q, rcode=0 if q.name in names else 3)]
    return handler


class FakeServerCase(unittest.TestCase):
    def fake(self, handler, host: str = "127.0.0.1") -> FakeDNS:
        server = FakeDNS(handler, host)
        self.addCleanup(server.close)
        self.addCleanup(lambda: self.assertEqual(server.errors, []))
        return server


# ---------------------------------------------------------------- against dnsmasq

class DnsmasqTest(unittest.TestCase):
    proc: subprocess.Popen | None = None

    @classmethod
    def setUpClass(cls) -> None:
        program = require_program(cls(), "dnsmasq", "/usr/sbin/dnsmasq")
        cls.dns = Dnsmasq(program, [
            "--mx-host=example.test,mx1.example.test,10", "--mx-host=example.test,mx2.example.test,20",
            "--host-record=mx1.example.test,127.0.0.2", "--host-record=mx2.example.test,127.0.0.3,::1",
            "--cname=alias.example.test,mx1.example.test", "--mx-host=nullmx.test,.,0",
            "--host-record=aonly.test,127.0.0.4"], probe="example.test")
        cls.port = cls.dns.port

    @classmethod
    def tearDownClass(cls) -> None:
        cls.dns.stop()

    def setUp(self) -> None:
        self.r = Resolver([("127.0.0.1", self.port)], timeout=1.0, attempts=2)

    def test_mx_sorted_by_preference(self):
        self.assertEqual(self.r.mx("Example.TEST."), [MXRecord(10, "mx1.example.test"), MXRecord(20, "mx2.example.test")])

    def test_addresses_give_ipv4_then_ipv6(self):
        self.assertEqual(self.r.addresses("mx2.example.test"), ["127.0.0.3", "::1"])

    def test_cname_is_followed(self):
        self.assertEqual(self.r.addresses("alias.example.test"), ["127.0.0.2"])

    def test_domain_with_only_an_address_has_no_mx(self):
        self.assertEqual(self.r.mx("aonly.test"), [])
        self.assertEqual(self.r.addresses("aonly.test"), ["127.0.0.4"])

    def test_unknown_name_is_nxdomain(self):
        with self.assertRaises(NXDomain):
            self.r.mx("nosuch.test")
        with self.assertRaises(NXDomain):
            self.r.addresses("nosuch.test")
        with self.assertRaises(NXDomain):  # from the cache this time
            self.r.mx("nosuch.test")

    def test_null_mx(self):
        self.assertEqual(self.r.mx("nullmx.test"), [MXRecord(0, "")])


# ---------------------------------------------------------------- against the fake server

class FakeServerTest(FakeServerCase):
    def test_cache_second_lookup_sends_no_packet(self):
        fake = self.fake(zone({("d.test", MX): [(300, mx_rdata(5, "mx.d.test"))]}))
        r = Resolver([fake.server], timeout=1)
        self.assertEqual(r.mx("d.test"), [MXRecord(5, "mx.d.test")])
        self.assertEqual(r.mx("D.test"), [MXRecord(5, "mx.d.test")])
        self.assertEqual(fake.count(), 1)
        r.clear_cache()
        r.mx("d.test")
        self.assertEqual(fake.count(), 2)

    def test_query_format_and_randomness(self):
        fake = self.fake(zone({("d.test", A): [(300, ip("192.0.2.1"))]}))
        r = Resolver([fake.server], timeout=1)
        for _ in range(6):
            self.assertEqual(r.addresses("D.Test"), ["192.0.2.1"])
            r.clear_cache()
        a_queries = [(q, src) for via, q, src in fake.queries if q.qtype == A]
        self.assertEqual(len(a_queries), 6)
        for q, _ in a_queries:
            self.assertEqual((q.name, q.qdcount, q.flags & 0x0100, q.flags & 0x8000), ("d.test", 1, 0x0100, 0))
        self.assertGreater(len({q.qid for q, _ in a_queries}), 1)
        self.assertGreater(len({src[1] for _, src in a_queries}), 1)  # fresh socket, fresh port

    def test_international_name_is_sent_as_idna(self):
        fake = self.fake(zone({("xn--bcher-kva.test", A): [(300, ip("192.0.2.7"))]}))
        self.assertEqual(Resolver([fake.server], timeout=1).addresses("Bücher.test"), ["192.0.2.7"])

    def test_truncated_reply_is_asked_again_over_tcp(self):
        def handler(q, via):
            if via == "udp":
                return [reply(q, tc=True)]
            return [reply(q, [rr(q.name, MX, 300, mx_rdata(n, f"mx{n}.big.test")) for n in range(1, 4)])]
        fake = self.fake(handler)
        self.assertEqual([m.host for m in Resolver([fake.server], timeout=1).mx("big.test")],
                         ["mx1.big.test", "mx2.big.test", "mx3.big.test"])
        self.assertEqual((fake.count("udp"), fake.count("tcp")), (1, 1))

    def test_truncated_reply_and_tcp_failing_is_temporary(self):
        fake = self.fake(lambda q, via: [reply(q, tc=True)] if via == "udp" else [])
        with self.assertRaises(DNSTemporaryError):
            Resolver([fake.server], timeout=0.5, attempts=1).mx("big.test")
        self.assertEqual(fake.count("tcp"), 1)

    def test_servfail_or_refused_then_the_next_server_answers(self):
        for rcode in (2, 5):
            bad = self.fake(lambda q, via, rcode=rcode: [reply(q, rcode=rcode)])
            good = self.fake(zone({("d.test", A): [(300, ip("192.0.2.1"))]}))
            r = Resolver([bad.server, good.server], timeout=1)
            self.assertEqual(r.addresses("d.test"), ["192.0.2.1"])
            self.assertEqual(bad.count(), 2)  # A and AAAA each tried there first

    def test_every_server_failing_is_temporary_after_all_rounds(self):
        one, two = (self.fake(lambda q, via: [reply(q, rcode=2)]) for _ in range(2))
        with self.assertRaises(DNSTemporaryError) as cm:
            Resolver([one.server, two.server], timeout=1, attempts=3).mx("d.test")
        self.assertIn("no answer from DNS servers", str(cm.exception))
        self.assertIn("SERVFAIL", str(cm.exception))
        self.assertEqual((one.count(), two.count()), (3, 3))

    def test_replies_with_wrong_id_or_from_another_port_are_ignored(self):
        def handler(q, via):
            bogus = [rr(q.name, A, 300, ip("192.0.2.66"))]
            other = reply(q, [rr("other.test", A, 300, ip("192.0.2.66"))]).replace(q.question, wire("other.test") + q.question[-4:])
            not_a_reply = bytearray(reply(q, bogus))
            not_a_reply[2] &= 0x7F  # QR off
            return [reply(q, bogus, qid=q.qid ^ 1), ("spoof", reply(q, bogus)), other, bytes(not_a_reply),
                    reply(q, [rr(q.name, A, 300, ip("192.0.2.1"))])]
        fake = self.fake(handler)
        self.assertEqual(Resolver([fake.server], timeout=1).addresses("d.test"), ["192.0.2.1"])

    def test_only_wrong_replies_means_time_out(self):
        fake = self.fake(lambda q, via: [reply(q, qid=q.qid ^ 0x8000), ("spoof", reply(q))])
        start = time.monotonic()
        with self.assertRaises(DNSTemporaryError):
            Resolver([fake.server], timeout=0.3, attempts=2).mx("d.test")
        self.assertGreater(time.monotonic() - start, 0.5)
        self.assertEqual(fake.count(), 2)

    def test_malformed_replies_are_temporary_errors(self):
        cases = {
            # the owner name points at itself (it starts right after the question)
            "pointer loop": lambda q: reply(q, [rr(pointer(12 + len(q.question)), A, 1, ip("192.0.2.1"))]),
            "pointer out of range": lambda q: reply(q, [rr(b"\xc3\xff", A, 1, ip("192.0.2.1"))]),
            "cut-off record": lambda q: reply(q, [rr(q.name, A, 1, ip("192.0.2.1"))])[:-3],
            "short A record": lambda q: reply(q, [rr(q.name, A, 1, b"\x7f\0\0")]),
            # the exchange name (after owner 2, header 10, preference 2) points at itself
            "MX name loop": lambda q: reply(q, [rr(pointer(12), MX, 1, b"\0\x05" + pointer(12 + len(q.question) + 14))]),
        }
        for label, build in cases.items():
            with self.subTest(label):
                fake = self.fake(lambda q, via, build=build: [build(q)])
                with self.assertRaises(DNSTemporaryError) as cm:
                    Resolver([fake.server], timeout=1, attempts=1).mx("d.test")
                self.assertIn("malformed", str(cm.exception))

    def test_null_mx_with_compressed_owner(self):
        fake = self.fake(lambda q, via: [reply(q, [rr(pointer(12), MX, 300, mx_rdata(0, "."))])])
        self.assertEqual(Resolver([fake.server], timeout=1).mx("null.test"), [MXRecord(0, "")])

    def test_cname_chain_in_one_answer(self):
        def handler(q, via):
            return [reply(q, [rr(q.name, CNAME, 300, wire("b.test")), rr("b.test", CNAME, 300, wire("c.test")),
                              rr("c.test", q.qtype, 300, ip("192.0.2.3") if q.qtype == A else ip("2001:db8::3"))])]
        fake = self.fake(handler)
        self.assertEqual(Resolver([fake.server], timeout=1).addresses("a.test"), ["192.0.2.3", "2001:db8::3"])
        self.assertEqual(fake.count(), 2)

    def test_cname_target_is_asked_again(self):
        fake = self.fake(zone({("a.test", CNAME): [(300, wire("b.test"))], ("b.test", A): [(300, ip("192.0.2.2"))]}))
        self.assertEqual(Resolver([fake.server], timeout=1).addresses("a.test"), ["192.0.2.2"])
        self.assertIn(("b.test", A), [(q.name, q.qtype) for _, q, _ in fake.queries])

    def test_cname_loop_and_long_chain_are_temporary(self):
        loop = self.fake(zone({("a.test", CNAME): [(300, wire("b.test"))], ("b.test", CNAME): [(300, wire("a.test"))]}))
        with self.assertRaises(DNSTemporaryError):
            Resolver([loop.server], timeout=1).addresses("a.test")
        self.assertLess(loop.count(), 20)
        chain = {(f"h{n}.test", CNAME): [(300, wire(f"h{n + 1}.test"))] for n in range(9)}
        chain[("h9.test", A)] = [(300, ip("192.0.2.9"))]
        fake = self.fake(zone(chain))
        with self.assertRaises(DNSTemporaryError):
            Resolver([fake.server], timeout=1).addresses("h0.test")
        self.assertEqual(Resolver([fake.server], timeout=1).addresses("h1.test")[:1], ["192.0.2.9"])  # 8 hops: fine

    def test_silent_server_times_out_after_attempts(self):
        fake = self.fake(lambda q, via: [])
        start = time.monotonic()
        with self.assertRaises(DNSTemporaryError) as cm:
            Resolver([fake.server], timeout=0.3, attempts=2).mx("d.test")
        elapsed = time.monotonic() - start
        self.assertTrue(0.55 < elapsed < 1.6, elapsed)
        self.assertIn("no answer from DNS servers", str(cm.exception))
        self.assertEqual(fake.count(), 2)

    def test_closed_port_is_temporary_at_once_not_after_the_time_out(self):
        # A resolver that is not running (a local one that is down): its port answers with
        # ICMP.  Before, each attempt waited the whole time-out (here 2 x 5 s).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        start = time.monotonic()
        with self.assertRaises(DNSTemporaryError) as cm:
            Resolver([("127.0.0.1", port)], timeout=5, attempts=2).addresses("d.test")
        self.assertLess(time.monotonic() - start, 2.0)
        self.assertIn("refused", str(cm.exception))

    def test_a_closed_first_server_hands_over_to_the_next_at_once(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            closed = ("127.0.0.1", s.getsockname()[1])
        fake = self.fake(lambda q, via: [reply(q, [rr(q.name, A, 300, ip("192.0.2.7"))])])
        start = time.monotonic()
        self.assertEqual(Resolver([closed, fake.server], timeout=5).addresses("d.test"), ["192.0.2.7"])
        self.assertLess(time.monotonic() - start, 2.0)

    def test_ipv6_server(self):
        try:
            fake = self.fake(zone({("d.test", MX): [(300, mx_rdata(1, "mx.d.test"))]}), host="::1")
        except OSError as e:
            self.skipTest(f"no IPv6 loopback here: {e}")
        self.assertEqual(Resolver([("::1", fake.port)], timeout=1).mx("d.test"), [MXRecord(1, "mx.d.test")])

    def test_aaaa_failure_is_tolerated_when_ipv4_was_found(self):
        def handler(q, via):
            return [reply(q, rcode=2)] if q.qtype == AAAA else [reply(q, [rr(q.name, A, 300, ip("192.0.2.1"))])]
        fake = self.fake(handler)
        self.assertEqual(Resolver([fake.server], timeout=1, attempts=1).addresses("d.test"), ["192.0.2.1"])

    def test_threads_share_one_resolver(self):
        records = {(f"h{n}.test", A): [(300, ip(f"192.0.2.{n}"))] for n in range(1, 9)}
        fake = self.fake(zone(records))
        r, results, errors = Resolver([fake.server], timeout=2), {}, []

        def work(n: int) -> None:
            try:
                for _ in range(5):
                    results[n] = r.addresses(f"h{n}.test")
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        self.assertEqual(errors, [])
        self.assertEqual(results, {n: [f"192.0.2.{n}"] for n in range(1, 9)})
        self.assertEqual(fake.count(), 16)  # each name's A and AAAA once, the rest from the cache


class CacheTimeTest(FakeServerCase):
    def setUp(self) -> None:
        self.now = 1000.0
        self.clock = lambda: self.now

    def test_ttl_expiry_uses_the_smallest_ttl_of_the_chain(self):
        fake = self.fake(lambda q, via: [reply(q, [rr(q.name, CNAME, 30, wire("b.test")), rr("b.test", MX, 300, mx_rdata(1, "m.test"))])])
        r = Resolver([fake.server], timeout=1, clock=self.clock)
        r.mx("a.test")
        self.now += 29
        r.mx("a.test")
        self.assertEqual(fake.count(), 1)
        self.now += 2
        r.mx("a.test")
        self.assertEqual(fake.count(), 2)

    def test_ttl_is_capped_at_a_day(self):
        fake = self.fake(zone({("d.test", MX): [(10 * 86400, mx_rdata(1, "m.test"))]}))
        r = Resolver([fake.server], timeout=1, clock=self.clock)
        r.mx("d.test")
        self.now += 86399
        r.mx("d.test")
        self.assertEqual(fake.count(), 1)
        self.now += 2
        r.mx("d.test")
        self.assertEqual(fake.count(), 2)

    def test_nxdomain_cached_for_the_soa_minimum(self):
        fake = self.fake(lambda q, via: [reply(q, authority=[rr("test", SOA, 3600, soa_rdata(5))], rcode=3)])
        r = Resolver([fake.server], timeout=1, clock=self.clock)
        for step in (0, 4):
            self.now += step
            with self.assertRaises(NXDomain):
                r.mx("gone.test")
        self.assertEqual(fake.count(), 1)
        self.now += 2
        with self.assertRaises(NXDomain):
            r.mx("gone.test")
        self.assertEqual(fake.count(), 2)

    def test_nodata_without_soa_cached_for_sixty_seconds(self):
        fake = self.fake(lambda q, via: [reply(q)])
        r = Resolver([fake.server], timeout=1, clock=self.clock)
        self.assertEqual(r.mx("d.test"), [])
        self.now += 59
        self.assertEqual(r.mx("d.test"), [])
        self.assertEqual(fake.count(), 1)
        self.now += 2
        self.assertEqual(r.mx("d.test"), [])
        self.assertEqual(fake.count(), 2)


# ---------------------------------------------------------------- no network

class NamesAndServersTest(unittest.TestCase):
    def test_parse_server_forms(self):
        self.assertEqual(parse_server("192.0.2.53"), ("192.0.2.53", 53))
        self.assertEqual(parse_server(" 127.0.0.1:5353 "), ("127.0.0.1", 5353))
        self.assertEqual(parse_server("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_server("[::1]"), ("::1", 53))
        self.assertEqual(parse_server("::1"), ("::1", 53))
        self.assertEqual(parse_server("2001:DB8::35"), ("2001:db8::35", 53))
        for bad, reason in [("", "empty"), ("dns.example.com", "not an IP address"), ("127.0.0.1:0", "port"),
                            ("127.0.0.1:99999", "port"), ("127.0.0.1:", "port"), ("[::1", "]"),
                            ("[127.0.0.1]:53", "brackets"), ("[::1]:x", "port"), ("1.2.3.4:5:6", "not an IP")]:
            with self.subTest(bad), self.assertRaises(ValueError) as cm:
                parse_server(bad)
            self.assertIn(reason, str(cm.exception))

    def test_bad_names_are_permanent_errors(self):
        r = Resolver([])
        for bad in ["", ".", "a..b", "x" * 64 + ".test", ".".join(["a" * 63] * 4), "sp ace.test"]:
            with self.subTest(bad), self.assertRaises(DNSError) as cm:
                r.mx(bad)
            self.assertNotIsInstance(cm.exception, (DNSTemporaryError, NXDomain))
        self.assertEqual(dns.normalize_name("a" * 63 + ".Test."), "a" * 63 + ".test")

    def test_ip_literal_needs_no_query_and_no_servers_is_temporary(self):
        r = Resolver([])
        self.assertEqual(r.addresses("127.0.0.1"), ["127.0.0.1"])
        self.assertEqual(r.addresses("::1"), ["::1"])
        with self.assertRaises(DNSTemporaryError) as cm:
            r.mx("example.test")
        self.assertIn("no DNS servers", str(cm.exception))

    def test_system_servers_are_read_lazily(self):
        calls = []
        with mock.patch.object(dns, "system_nameservers", lambda: calls.append(1) or []):
            r = Resolver(timeout=0.2, attempts=1)
            self.assertEqual(calls, [])
            with self.assertRaises(DNSTemporaryError):
                r.mx("example.test")
            self.assertEqual(calls, [1])


class SystemNameserversTest(unittest.TestCase):
    def test_resolv_conf(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "resolv.conf"
            path.write_text("# nameserver 10.9.9.9\n; comment\nsearch example.com\nnameserver 192.0.2.1  # main\n"
                            "nameserver\t2001:db8::53\nnameserver fe80::1%eth0\nnameserver not-an-ip\n"
                            "nameserver 192.0.2.1\noptions ndots:2\n")
            self.assertEqual(system_nameservers(resolv_conf=path),
                             [("192.0.2.1", 53), ("2001:db8::53", 53), ("fe80::1%eth0", 53)])

    def test_missing_resolv_conf_warns_once(self):
        with tempfile.TemporaryDirectory() as tmp, mock.patch.object(dns, "_warned_none", False):
            with self.assertLogs("ismail.dns", "WARNING") as logs:
                self.assertEqual(system_nameservers(resolv_conf=Path(tmp) / "missing"), [])
                self.assertEqual(system_nameservers(resolv_conf=Path(tmp) / "missing"), [])
            self.assertEqual(len(logs.records), 1)
            self.assertIn("no DNS servers", logs.output[0])


class FakeKey:
    def __init__(self, path: str, values: dict) -> None:
        self.path, self.values = path, values

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeWinreg:
    """Just enough of the winreg module, over {key path: {value name: value}}."""
    HKEY_LOCAL_MACHINE = FakeKey("HKLM", {})

    def __init__(self, tree: dict) -> None:
        self.tree, self.opened = tree, []

    def OpenKey(self, key, sub):
        path = sub if key is self.HKEY_LOCAL_MACHINE else key.path + "\\" + sub
        if path not in self.tree:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        self.opened.append(path)
        return FakeKey(path, self.tree[path])

    def QueryValueEx(self, key, name):
        if name not in key.values:
            raise FileNotFoundError(2, "The system cannot find the file specified")
        return key.values[name], 1

    def EnumKey(self, key, index):
        children = [p[len(key.path) + 1:] for p in self.tree if p.startswith(key.path + "\\")]
        if index >= len(children):
            raise OSError(259, "No more data is available")
        return children[index]


def fake_get_network_params(addresses: list[bytes], result: int = 0):
    """GetNetworkParams filling a real FIXED_INFO (with a linked list) in the caller's buffer."""
    extra = [dns._IPAddrString() for _ in addresses[1:]]
    for entry, address in zip(extra, addresses[1:]):
        entry.IpAddress = address
    for entry, following in zip(extra, extra[1:]):
        entry.Next = ctypes.pointer(following)

    def call(buf, size_ptr):
        need = ctypes.sizeof(dns._FixedInfo)
        if buf is None or size_ptr.contents.value < need:
            size_ptr.contents.value = need
            return 111  # ERROR_BUFFER_OVERFLOW
        if result:
            return result
        info = dns._FixedInfo()
        info.DnsServerList.IpAddress = addresses[0]
        if extra:
            info.DnsServerList.Next = ctypes.pointer(extra[0])
        ctypes.memmove(buf, ctypes.addressof(info), need)
        return 0
    call.keep = extra  # the list entries must outlive the call
    return call


class WindowsNameserversTest(unittest.TestCase):
    TCPIP = r"SYSTEM\CurrentControlSet\Services\Tcpip\Parameters"
    TCPIP6 = r"SYSTEM\CurrentControlSet\Services\Tcpip6\Parameters"

    def test_registry_static_then_dhcp_per_interface(self):
        winreg = FakeWinreg({
            self.TCPIP: {"NameServer": "", "DhcpNameServer": "192.0.2.1"},
            self.TCPIP + r"\Interfaces": {},
            self.TCPIP + r"\Interfaces\{A}": {"NameServer": "10.0.0.1,10.0.0.2", "DhcpNameServer": "10.9.9.9"},
            self.TCPIP + r"\Interfaces\{B}": {"DhcpNameServer": "192.0.2.7 192.0.2.8"},
            self.TCPIP + r"\Interfaces\{C}": {},
            self.TCPIP6 + r"\Interfaces": {},
            self.TCPIP6 + r"\Interfaces\{A}": {"NameServer": "2001:db8::53"},
        })
        gnp = mock.Mock(side_effect=AssertionError("the fallback must not be used"))
        self.assertEqual(dns._windows_nameservers(winreg, gnp),
                         ["192.0.2.1", "10.0.0.1", "10.0.0.2", "192.0.2.7", "192.0.2.8", "2001:db8::53"])

    def test_ip_helper_fallback_when_the_registry_has_none(self):
        winreg = FakeWinreg({self.TCPIP: {"NameServer": ""}})
        gnp = fake_get_network_params([b"192.0.2.9", b"192.0.2.10", b"192.0.2.11"])
        self.assertEqual(dns._windows_nameservers(winreg, gnp), ["192.0.2.9", "192.0.2.10", "192.0.2.11"])
        self.assertEqual(dns._windows_nameservers(winreg, fake_get_network_params([b"1.2.3.4"], result=232)), [])

    def test_system_nameservers_on_windows(self):
        winreg = FakeWinreg({self.TCPIP: {"NameServer": "192.0.2.1, 192.0.2.1 nonsense [::1]:5353"}})
        windows = functools.partial(dns._windows_nameservers, winreg, fake_get_network_params([b"10.0.0.1"]))
        with mock.patch.object(dns, "_IS_WINDOWS", True), mock.patch.object(dns, "_windows_nameservers", windows):
            self.assertEqual(system_nameservers(), [("192.0.2.1", 53), ("::1", 5353)])


if __name__ == "__main__":
    unittest.main()
