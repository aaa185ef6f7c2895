"""Tests for ismail.store.routes: routes (fixed next hops) and relay domains (backup MX)."""
from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
import threading
import unittest
from pathlib import Path
from unittest import mock

from ismail.platform.protect import PREFIX, ProtectError, protect
from ismail.store import routes_rules
from ismail.store.routes import TLS_MODES, RelayDomain, Route, RouteError, Routes

LOCAL = {"example.com", "example.org"}
OWN_NAMES = {"mx.example.com", "localhost", "127.0.0.12"}
OWN_PORTS = {25, 587}


class RoutesTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.data = Path(self._tmp.name)
        self.file = self.data / "routes.json"
        self.table = self.new_table()

    def new_table(self) -> Routes:
        table = Routes(self.data, reload_interval=0)
        table.load()
        return table

    def route(self, route: Route, table: Routes | None = None, **kw) -> None:
        args = {"local_domains": LOCAL, "own_names": OWN_NAMES, "own_ports": OWN_PORTS, **kw}
        (table or self.table).set_route(route, **args)

    def relay(self, relay: RelayDomain, table: Routes | None = None) -> None:
        (table or self.table).set_relay_domain(relay, local_domains=LOCAL)

    def doc(self) -> dict:
        return json.loads(self.file.read_text("utf-8"))

    def refused(self, *words: str) -> "_Refused":
        return _Refused(self, words)


class _Refused:
    """with self.refused("port", "65535"): ... asserts RouteError naming every word."""

    def __init__(self, test: unittest.TestCase, words: tuple[str, ...]) -> None:
        self.test, self.words = test, words

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        self.test.assertTrue(kind is not None and issubclass(kind, RouteError),
                             f"expected RouteError naming {self.words}, got {exc!r}")
        for word in self.words:
            self.test.assertIn(word, str(exc))
        return True


class RouteRulesTest(RoutesTest):
    def test_route_is_stored_normalised_and_found_case_insensitively(self) -> None:
        self.route(Route("Corp.Example.", "Exchange.Corp.Example", 2525, "starttls"))
        got = self.table.route_for("CORP.example.")
        self.assertEqual(got, Route("corp.example", "exchange.corp.example", 2525, "starttls"))
        self.assertIsNone(self.table.route_for("example.net"))
        self.assertEqual(self.doc()["routes"]["corp.example"]["host"], "exchange.corp.example")
        self.assertEqual(self.doc()["version"], 1)

    def test_ip_literals_are_hosts(self) -> None:
        self.route(Route("a.example", "192.0.2.7"))
        self.route(Route("b.example", "[2001:DB8::0:1]"))
        self.assertEqual(self.table.route_for("a.example").host, "192.0.2.7")
        self.assertEqual(self.table.route_for("b.example").host, "2001:db8::1")  # no brackets
        with self.refused("c.example", "host", "one host"):
            self.route(Route("c.example", "0.0.0.0"))

    def test_bad_domains_are_refused(self) -> None:
        for bad in ("*.example.com", "", "exa mple.com", "a..b", "-x.example", "10.0.0.1",
                    "bad\r\n.example"):
            with self.subTest(bad=bad), self.refused("route", "domain"):
                self.route(Route(bad, "mail.example.net"))
        with self.refused("wildcards are not supported"):
            self.route(Route("*.example.com", "mail.example.net"))

    def test_bad_hosts_ports_and_tls_are_refused(self) -> None:
        cases = [(Route("corp.example", "bad host"), ("route corp.example", "host")),
                 (Route("corp.example", "127.1"), ("host", "IP address")),
                 (Route("corp.example", "h.example", 0), ("port", "1-65535")),
                 (Route("corp.example", "h.example", 65536), ("port", "1-65535")),
                 (Route("corp.example", "h.example", True), ("port",)),
                 (Route("corp.example", "h.example", tls="ssl"), ("tls", "'ssl'", '"starttls"'))]
        for route, words in cases:
            with self.subTest(route=route), self.refused(*words):
                self.route(route)
        self.assertFalse(self.file.exists())

    def test_every_tls_mode_is_accepted(self) -> None:
        self.assertEqual(TLS_MODES, ("none", "starttls", "starttls-optional", "tls"))
        for i, mode in enumerate(TLS_MODES):
            self.route(Route(f"d{i}.example", "h.example", tls=mode))
            self.assertEqual(self.table.route_for(f"d{i}.example").tls, mode)

    def test_login_needs_both_halves(self) -> None:
        with self.refused("route corp.example", "username without a password"):
            self.route(Route("corp.example", "h.example", username="ann"))
        with self.refused("route corp.example", "password without a username"):
            self.route(Route("corp.example", "h.example", password="pw"))

    def test_line_breaks_and_nul_are_refused_everywhere(self) -> None:
        for field, value in (("host", "h.example\r\nRCPT"), ("username", "ann\n"),
                             ("password", "p\0w")):
            route = Route("corp.example", "h.example", username="ann", password="pw")
            route = Route(**{**route.__dict__, field: value})
            with self.subTest(field=field), self.refused("route corp.example", field,
                                                         "line break or NUL"):
                self.route(route)

    def test_route_to_ourselves_is_a_loop(self) -> None:
        for host in ("MX.example.com.", "localhost", "127.0.0.12", "[127.0.0.12]",
                     "::ffff:127.0.0.12"):
            with self.subTest(host=host), self.refused("corp.example", "ISMail itself", "loop"):
                self.route(Route("corp.example", host, 25))
        # Another port on our own host is another service; another instance is not us.
        self.route(Route("corp.example", "localhost", 2525))
        self.route(Route("backup.example", "127.0.0.11", 25))
        self.assertEqual(self.table.route_for("backup.example").host, "127.0.0.11")

    def test_a_wildcard_listener_covers_loopback(self) -> None:
        with self.refused("loop"):
            self.route(Route("corp.example", "127.0.0.1"), own_names={"0.0.0.0"})
        with self.refused("loop"):
            self.route(Route("corp.example", "::1"), own_names={"::"})
        self.route(Route("corp.example", "::1"), own_names={"0.0.0.0"})  # IPv4 only

    def test_route_for_a_local_domain_is_refused(self) -> None:
        with self.refused("route example.com", "local domain"):
            self.route(Route("Example.COM", "h.example"))

    def test_problems_report_a_domain_made_local_later(self) -> None:
        self.route(Route("corp.example", "h.example"))
        self.relay(RelayDomain("backup.example"))
        self.assertEqual(self.table.problems(local_domains=LOCAL), [])
        problems = self.table.problems(local_domains=LOCAL | {"Corp.Example", "backup.example"})
        self.assertEqual(len(problems), 2)
        self.assertIn("route corp.example", problems[0])
        self.assertIn("relay domain backup.example", problems[1])
        self.assertIn("local domain", problems[1])

    def test_remove_route(self) -> None:
        self.route(Route("corp.example", "h.example"))
        self.table.remove_route("CORP.example")
        self.assertIsNone(self.table.route_for("corp.example"))
        with self.refused("no route", "corp.example"):
            self.table.remove_route("corp.example")


class RelayRulesTest(RoutesTest):
    def test_relay_accepts_listed_unlisted_and_other_domains(self) -> None:
        self.relay(RelayDomain("Backup.Example", ("Ann@Backup.example", "bob@backup.example.")))
        self.relay(RelayDomain("open.example"))
        t = self.table
        self.assertTrue(t.relay_accepts("ann@backup.example"))
        self.assertTrue(t.relay_accepts("ANN@BACKUP.EXAMPLE"))
        self.assertTrue(t.relay_accepts("bob@Backup.Example."))
        self.assertFalse(t.relay_accepts("carol@backup.example"))
        self.assertTrue(t.relay_accepts("anyone@OPEN.example"))
        self.assertIsNone(t.relay_accepts("ann@example.net"))
        self.assertIsNone(t.relay_accepts("ann@example.com"))
        self.assertIsNone(t.relay_accepts("no-at-sign"))
        self.assertEqual(t.relay_domain("BACKUP.example").recipients,
                         ("ann@backup.example", "bob@backup.example"))
        self.assertIsNone(t.relay_domain("example.net"))

    def test_relay_domain_that_is_local_is_refused(self) -> None:
        with self.refused("relay domain example.org", "local domain"):
            self.relay(RelayDomain("example.org."))

    def test_recipients_must_be_of_the_relay_domain(self) -> None:
        with self.refused("relay domain backup.example", "ann@other.example",
                          "bob@example.com"):
            self.relay(RelayDomain("backup.example", ("ann@other.example", "x@backup.example",
                                                      "bob@example.com")))
        with self.refused("recipient", "'not an address'"):
            self.relay(RelayDomain("backup.example", ("not an address",)))
        with self.refused("recipient", "line break"):
            self.relay(RelayDomain("backup.example", ("a\r\n@backup.example",)))
        with self.refused("recipients must be a list"):
            self.relay(RelayDomain("backup.example", "ann@backup.example"))  # type: ignore

    def test_lifetime_hours(self) -> None:
        for bad in (0, 8761, -1, 1.5, True, "480"):
            with self.subTest(bad=bad), self.refused("relay domain backup.example",
                                                     "lifetime_hours", "1-8760"):
                self.relay(RelayDomain("backup.example", (), bad))  # type: ignore[arg-type]
        self.relay(RelayDomain("backup.example", (), 8760))
        self.assertEqual(self.table.relay_domain("backup.example").lifetime_hours, 8760)
        self.relay(RelayDomain("backup.example"))
        self.assertIsNone(self.table.relay_domain("backup.example").lifetime_hours)

    def test_a_relay_domain_may_also_have_a_route(self) -> None:
        self.relay(RelayDomain("backup.example"))
        self.route(Route("backup.example", "primary.backup.example"))
        self.assertIsNotNone(self.table.route_for("backup.example"))
        self.assertIsNotNone(self.table.relay_domain("backup.example"))

    def test_remove_relay_domain(self) -> None:
        self.relay(RelayDomain("backup.example"))
        self.table.remove_relay_domain("backup.EXAMPLE")
        self.assertIsNone(self.table.relay_accepts("ann@backup.example"))
        with self.refused("no relay domain", "backup.example"):
            self.table.remove_relay_domain("backup.example")


class FileTest(RoutesTest):
    def test_round_trip_through_a_new_object(self) -> None:
        self.route(Route("corp.example", "exchange.corp.example", 587, "starttls", "ann", "s3cret"))
        self.route(Route("lab.example", "192.0.2.9", tls="none"))
        self.relay(RelayDomain("backup.example", ("ann@backup.example",), 480))
        other = self.new_table()
        self.assertEqual(other.routes(), self.table.routes())
        self.assertEqual(other.relay_domains(), self.table.relay_domains())
        self.assertEqual(other.route_for("corp.example").password, "s3cret")
        self.assertEqual([r.domain for r in other.routes()], ["corp.example", "lab.example"])

    def test_the_documented_example_loads(self) -> None:
        self.file.write_text(json.dumps(
            {"version": 1,
             "routes": {"corp.example": {"host": "exchange.corp.example", "port": 25,
                                         "tls": "starttls", "username": "", "password": ""}},
             "relay_domains": {"backup.example": {"recipients": ["ann@backup.example"],
                                                  "lifetime_hours": 480}}}))
        table = self.new_table()
        self.assertEqual(table.route_for("corp.example").tls, "starttls")
        self.assertEqual(table.relay_domain("backup.example").lifetime_hours, 480)
        self.assertEqual(table.load_problem, "")

    def test_file_is_owner_only_and_the_password_is_stored_protected(self) -> None:
        self.route(Route("corp.example", "h.example", username="ann", password="s3cret-pw"))
        stored = self.doc()["routes"]["corp.example"]["password"]
        self.assertEqual(stored, protect("s3cret-pw"))
        if os.name == "nt":
            self.assertTrue(stored.startswith(PREFIX))  # DPAPI
            self.assertNotIn("s3cret-pw", self.file.read_text("utf-8"))
        else:
            # POSIX has no DPAPI in the standard library: protect() keeps the text and the
            # owner-only file does the protecting (as for smarthost.password).
            self.assertEqual(stat.S_IMODE(self.file.stat().st_mode), 0o600)
        self.assertNotIn("s3cret-pw", repr(self.table.route_for("corp.example")))

    def test_a_protecting_platform_never_writes_the_password_in_clear(self) -> None:
        def seal(pw: str) -> str:
            return pw if not pw else PREFIX + base64.b64encode(pw[::-1].encode()).decode()

        def unseal(stored: str) -> str:
            if not stored.startswith(PREFIX):
                return stored
            return base64.b64decode(stored[len(PREFIX):]).decode()[::-1]
        with mock.patch.object(routes_rules, "protect", seal), \
                mock.patch.object(routes_rules, "unprotect", unseal):
            self.route(Route("corp.example", "h.example", username="ann", password="s3cret-pw"))
            self.assertNotIn("s3cret-pw", self.file.read_text("utf-8"))
            blob = self.doc()["routes"]["corp.example"]["password"]
            self.relay(RelayDomain("backup.example"))  # an unchanged password keeps its blob
            self.assertEqual(self.doc()["routes"]["corp.example"]["password"], blob)
            self.assertEqual(self.new_table().route_for("corp.example").password, "s3cret-pw")

    def test_a_password_that_cannot_be_opened_is_reported_and_kept(self) -> None:
        foreign = PREFIX + "AAAA"  # another user's or computer's DPAPI blob
        self.file.write_text(json.dumps({"version": 1, "routes": {"corp.example": {
            "host": "h.example", "username": "ann", "password": foreign}}}))
        table = self.new_table()
        self.assertEqual(table.route_for("corp.example").password, "")
        self.assertEqual(table.route_for("corp.example").username, "ann")
        problems = table.problems(local_domains=LOCAL)
        self.assertEqual(len(problems), 1)
        self.assertIn("route corp.example", problems[0])
        self.assertIn("password", problems[0])
        self.relay(RelayDomain("backup.example"), table)  # another edit keeps the blob
        self.assertEqual(self.doc()["routes"]["corp.example"]["password"], foreign)
        self.assertEqual(table.load_problem, "")
        with self.refused("username without a password"):
            self.route(Route("corp.example", "h.example", username="ann"), table)
        self.route(Route("corp.example", "h.example", username="ann", password="new"), table)
        self.assertEqual(table.problems(local_domains=LOCAL), [])

    def test_unknown_keys_are_kept(self) -> None:
        self.file.write_text(json.dumps({
            "version": 1, "future_section": {"x": 1},
            "routes": {"corp.example": {"host": "h.example", "mx_fallback": True}},
            "relay_domains": {"backup.example": {"recipients": [], "note": "ask Bob"}}}))
        table = self.new_table()
        self.route(Route("corp.example", "h2.example", 2525), table)  # replaced, extras kept
        self.route(Route("lab.example", "h3.example"), table)
        doc = self.doc()
        self.assertEqual(doc["future_section"], {"x": 1})
        self.assertIs(doc["routes"]["corp.example"]["mx_fallback"], True)
        self.assertEqual(doc["routes"]["corp.example"]["host"], "h2.example")
        self.assertEqual(doc["relay_domains"]["backup.example"]["note"], "ask Bob")
        table.remove_relay_domain("backup.example")
        self.assertNotIn("backup.example", self.doc()["relay_domains"])

    def test_corrupt_file_set_aside_with_its_bytes(self) -> None:
        original = b'{"version": 1, "routes": {"corp.example": '
        self.file.write_bytes(original)
        with self.assertLogs("ismail.routes", "ERROR") as logs:
            table = self.new_table()
        self.assertEqual(table.routes(), [])
        aside = list(self.data.glob("routes.json.corrupt-*"))
        self.assertEqual(len(aside), 1)
        self.assertEqual(aside[0].read_bytes(), original)
        self.assertIn(aside[0].name, logs.output[0])
        self.assertIn(aside[0].name, table.load_problem)
        self.assertIn("not valid JSON", table.load_problem)
        self.assertFalse(self.file.exists())

    def test_wrong_types_and_values_are_corrupt(self) -> None:
        cases = [({"version": 2}, "'version' is 2"),
                 ({"version": True}, "'version' is True"),
                 ([], "top level"),
                 ({"routes": []}, "'routes' is not an object"),
                 ({"routes": {"corp.example": "h.example"}}, "route corp.example is not an object"),
                 ({"routes": {"corp.example": {"host": "h.example", "port": "25"}}}, "port"),
                 ({"routes": {"corp.example": {"port": 25}}}, "host"),
                 ({"routes": {"corp.example": {"host": "h", "tls": "ssl"}}}, "tls"),
                 ({"routes": {"a.example": {"host": "h"}, "A.example": {"host": "h"}}}, "twice"),
                 ({"routes": {"*.example": {"host": "h"}}}, "wildcards"),
                 ({"relay_domains": {"b.example": {"recipients": "x@b.example"}}}, "list"),
                 ({"relay_domains": {"b.example": {"lifetime_hours": 1.5}}}, "lifetime_hours"),
                 ({"relay_domains": {"b.example": {"recipients": ["x@c.example"]}}},
                  "x@c.example")]
        for doc, words in cases:
            with self.subTest(doc=doc):
                self.file.write_text(json.dumps(doc))
                with self.assertLogs("ismail.routes", "ERROR"):
                    table = self.new_table()
                self.assertIn(words, table.load_problem)
                self.assertFalse(self.file.exists())
        self.assertEqual(len(list(self.data.glob("routes.json.corrupt-*"))), len(cases))

    def test_an_edit_of_a_corrupted_file_is_refused_then_goes_on(self) -> None:
        self.route(Route("corp.example", "h.example"))
        self.file.write_text('{"routes": []}')
        with self.assertLogs("ismail.routes", "ERROR"):
            with self.refused("set aside", "'routes' is not an object"):
                self.route(Route("lab.example", "h.example"))
        aside = list(self.data.glob("routes.json.corrupt-*"))
        self.assertEqual(len(aside), 1)
        self.assertEqual(aside[0].read_text(), '{"routes": []}')
        self.assertEqual(self.table.routes(), [])
        self.route(Route("lab.example", "h.example"))  # the admin was told; a new file
        self.assertEqual([r.domain for r in self.new_table().routes()], ["lab.example"])
        self.assertTrue(aside[0].exists())

    def test_a_second_object_sees_edits_after_maybe_reload(self) -> None:
        other = self.new_table()
        self.assertIsNone(other.route_for("corp.example"))
        self.route(Route("corp.example", "h.example"))
        self.relay(RelayDomain("backup.example", ("ann@backup.example",)))
        other.maybe_reload()
        self.assertEqual(other.route_for("corp.example").host, "h.example")
        self.assertFalse(other.relay_accepts("bob@backup.example"))
        self.table.remove_route("corp.example")
        self.assertIsNone(other.route_for("corp.example"))
        self.file.unlink()
        self.assertIsNone(other.relay_accepts("ann@backup.example"))

    def test_edits_by_another_object_are_not_lost(self) -> None:
        other = self.new_table()
        self.route(Route("a.example", "h.example"))
        self.route(Route("b.example", "h.example"), other)  # re-reads first: a.example stays
        self.assertEqual([r.domain for r in self.new_table().routes()], ["a.example", "b.example"])

    def test_concurrent_edits_lose_nothing(self) -> None:
        tables = [self.new_table(), self.new_table()]
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(15):
                    self.route(Route(f"d{n}-{i}.example", "h.example"), tables[n])
            except BaseException as e:  # reported below, in the test's thread
                errors.append(e)
        threads = [threading.Thread(target=work, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(self.new_table().routes()), 30)
        self.assertFalse((self.data / "routes.json.lock").exists())

    def test_a_held_lock_is_reported_as_the_routes_lock(self) -> None:
        lock = self.data / "routes.json.lock"
        lock.write_text("12345\n")
        from ismail import fsutil
        with mock.patch.object(fsutil, "LOCK_TIMEOUT", 0.05):
            with self.refused("routes table is locked", str(lock)):
                self.route(Route("corp.example", "h.example"))
        self.assertTrue(lock.exists())


class ProtectErrorTest(RoutesTest):
    def test_a_password_windows_cannot_protect_refuses_the_edit(self) -> None:
        def fail(pw: str) -> str:
            raise ProtectError("could not be protected by Windows; enter the password again")
        with mock.patch.object(routes_rules, "protect", fail):
            with self.refused("route corp.example", "password", "could not be protected"):
                self.route(Route("corp.example", "h.example", username="a", password="b"))
        self.assertFalse(self.file.exists())


if __name__ == "__main__":
    unittest.main()
