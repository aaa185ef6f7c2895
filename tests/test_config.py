"""Tests for ismail.config: what a user editing ismail.json, or the GUI saving it, would check."""
from __future__ import annotations

import json
import os
import tempfile
import unittest
from pathlib import Path

from ismail import config
from ismail.config import (ConfigError, FieldError, IncomingSettings, RetrySettings, Settings,
                           SmartHostSettings, from_dict, load, save, validate)

RANGES = [
    ("incoming.max_connections", 10, 100),
    ("incoming.max_per_host", 1, 10),
    ("outgoing.max_connections", 1, 20),
    ("outgoing.mx_port", 1, 65535),
    ("max_message_size_mb", 1, 2000),
    ("smarthost.port", 1, 65535),
    ("timeouts.command_seconds", 10, 3600),
    ("retry.first_seconds", 1, 86400),
    ("retry.max_interval_seconds", 1, 86400),
    ("retry.lifetime_hours", 1, 720),
    ("retry.warn_hours", 0, 720),
]


def nested(key: str, value) -> dict:
    """{"a.b": v} as {"a": {"b": v}}, the way the file spells dotted keys."""
    section, _, name = key.rpartition(".")
    return {section: {name: value}} if section else {name: value}


def read_key(settings: Settings, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(settings, section), name) if section else getattr(settings, name)


class TempDirTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.path = self.dir / "ismail.json"

    def write(self, data) -> None:
        text = data if isinstance(data, str) else json.dumps(data, indent=2)
        self.path.write_text(text, encoding="utf-8")


class DefaultsTest(TempDirTest):
    def test_missing_file_gives_defaults_and_is_not_created(self) -> None:
        settings, warnings = load(self.path)
        self.assertEqual(warnings, [])
        self.assertEqual(settings, Settings())
        self.assertEqual(settings.primary_domain, "localhost")
        self.assertEqual(settings.listen, ["0.0.0.0:25"])
        self.assertEqual(settings.incoming.max_connections, 20)
        self.assertEqual(settings.incoming.max_per_host, 5)
        self.assertEqual(settings.outgoing.max_connections, 2)
        self.assertEqual(settings.max_message_size_mb, 50)
        self.assertEqual(settings.trusted_networks, ["127.0.0.0/8", "::1/128"])
        self.assertFalse(settings.smarthost.enabled)
        self.assertEqual(settings.smarthost.tls, "starttls")
        self.assertEqual(settings.retry.max_interval_seconds, 4000)
        self.assertEqual(settings.retry.warn_hours, 0)
        self.assertFalse(self.path.exists())

    def test_default_settings_are_valid(self) -> None:
        self.assertEqual(validate(Settings()), [])
        self.assertEqual(validate(Settings(server_name=config.default_server_name())), [])

    def test_missing_key_takes_default_while_others_are_read(self) -> None:
        self.write({"primary_domain": "Example.COM", "incoming": {"max_per_host": 3},
                    "server_name": "mx.example.com"})
        settings, warnings = load(self.path)
        self.assertEqual(warnings, [])
        self.assertEqual(settings.primary_domain, "example.com")  # stored lowercased
        self.assertEqual(settings.server_name, "mx.example.com")
        self.assertEqual(settings.incoming.max_per_host, 3)
        self.assertEqual(settings.incoming.max_connections, 20)
        self.assertEqual(settings.max_message_size_mb, 50)
        self.assertEqual(settings.listen, ["0.0.0.0:25"])

    def test_absent_server_name_uses_machine_name(self) -> None:
        settings, _ = from_dict({})
        self.assertEqual(settings.server_name, config.default_server_name())

    def test_derived_helpers(self) -> None:
        s, _ = from_dict({"primary_domain": "example.com", "additional_domains": ["Example.ORG"],
                          "max_message_size_mb": 3})
        self.assertEqual(s.local_domains(), frozenset({"example.com", "example.org"}))
        self.assertTrue(s.is_local_domain("EXAMPLE.org"))
        self.assertFalse(s.is_local_domain("example.net"))
        self.assertEqual(s.max_message_bytes, 3 * 1024 * 1024)


class RangeTest(unittest.TestCase):
    def test_boundaries_accepted(self) -> None:
        for key, lo, hi in RANGES:
            for value in (lo, hi):
                with self.subTest(key=key, value=value):
                    settings, _ = from_dict(nested(key, value))
                    self.assertEqual(read_key(settings, key), value)

    def test_just_outside_boundaries_refused(self) -> None:
        for key, lo, hi in RANGES:
            for value in (lo - 1, hi + 1):
                with self.subTest(key=key, value=value):
                    with self.assertRaises(ConfigError) as cm:
                        from_dict(nested(key, value))
                    self.assertEqual(len(cm.exception.errors), 1)
                    self.assertEqual(cm.exception.errors[0].key, key)
                    self.assertEqual(str(cm.exception), f"ismail.json: {key} = {value} is out of range "
                                                        f"(allowed {lo}–{hi})")

    def test_wrong_number_types_refused(self) -> None:
        for bad in (True, False, 20.0, "20", None, [20]):
            with self.subTest(bad=bad):
                with self.assertRaises(ConfigError) as cm:
                    from_dict({"incoming": {"max_connections": bad}})
                msg = str(cm.exception)
                self.assertIn("incoming.max_connections = " + json.dumps(bad), msg)
                self.assertIn("integer", msg)

    def test_wrong_bool_types_refused(self) -> None:
        for bad in (1, 0, "true", None):
            with self.subTest(bad=bad):
                with self.assertRaises(ConfigError) as cm:
                    from_dict({"smarthost": {"verify_certificate": bad}})
                self.assertIn("smarthost.verify_certificate", str(cm.exception))
                self.assertIn("boolean", str(cm.exception))

    def test_all_problems_reported_at_once(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            from_dict({"incoming": {"max_connections": 500}, "retry": {"lifetime_hours": 0},
                       "listen": ["nonsense"]})
        keys = [e.key for e in cm.exception.errors]
        self.assertEqual(sorted(keys), ["incoming.max_connections", "listen", "retry.lifetime_hours"])
        self.assertEqual(len(str(cm.exception).splitlines()), 3)

    def test_long_bad_value_is_truncated(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            from_dict({"primary_domain": "a" * 300})
        line = str(cm.exception)
        self.assertIn("primary_domain = \"aaaa", line)
        self.assertNotIn("a" * 70, line)


class ListenTest(unittest.TestCase):
    def refused(self, listen) -> str:
        with self.assertRaises(ConfigError) as cm:
            from_dict({"listen": listen})
        return str(cm.exception)

    def test_bad_entries_refused(self) -> None:
        for entry in ["1.2.3.4", "localhost:25", "::1:25", "[::1]", "[1.2.3.4]:25", "1.2.3.4:0",
                      "1.2.3.4:x", ":25", "[::1:25", "[::1]25", "", "999.1.1.1:25", 25]:
            with self.subTest(entry=entry):
                msg = self.refused(["0.0.0.0:25", entry])
                self.assertIn(f"listen[1] = {json.dumps(entry)}", msg)
                self.assertIn('"ip:port"', msg)

    def test_port_out_of_range_message(self) -> None:
        msg = self.refused(["0.0.0.0:25", "1.2.3.4:99999"])
        self.assertTrue(msg.startswith('ismail.json: listen[1] = "1.2.3.4:99999" is not valid: '
                                       'port must be 1–65535 (expected "ip:port", e.g. "0.0.0.0:25" '
                                       'or "[::]:25"'), msg)
        self.assertEqual(msg.count("\n"), 0)

    def test_listen_flags(self) -> None:
        s, _ = from_dict({"listen": ["0.0.0.0:25", "0.0.0.0:465 tls", "[::]:587 submission"],
                          "tls": {"certificate": "c.pem", "key": "k.pem"}})
        self.assertEqual([(e.host, e.port, e.tls, e.submission) for e in s.listen_entries()],
                         [("0.0.0.0", 25, False, False), ("0.0.0.0", 465, True, False),
                          ("::", 587, False, True)])
        self.assertIn("unknown flag 'fast'", self.refused(["0.0.0.0:25 fast"]))
        # a "tls" port needs a certificate: one configured, or the one ISMail makes itself
        from_dict({"listen": ["0.0.0.0:465 tls"]})
        with self.assertRaises(ConfigError) as cm:
            from_dict({"listen": ["0.0.0.0:465 tls"], "tls": {"self_signed": False}})
        self.assertIn('listen = ["0.0.0.0:465 tls"] has a "tls" listener, which needs tls.certificate',
                      str(cm.exception))
        self.assertIn("twice", self.refused(["127.0.0.1:25", "127.0.0.1:25 submission"]))

    def test_tls_files_go_together_and_blocked_networks_are_checked(self) -> None:
        with self.assertRaises(ConfigError) as ctx:
            from_dict({"tls": {"certificate": "c.pem"}, "access": {"blocked": ["10.0.0.0/8", "nonsense"]},
                       "auth": {"ban_after_failures": 0}})
        text = str(ctx.exception)
        self.assertIn("tls.key", text)
        self.assertIn('access.blocked[1] = "nonsense"', text)
        self.assertIn("auth.ban_after_failures = 0 is out of range (allowed 1–100)", text)

    def test_empty_or_not_a_list_refused(self) -> None:
        self.assertIn("listen = []", self.refused([]))
        self.assertIn("listen = \"0.0.0.0:25\" is not a list", self.refused("0.0.0.0:25"))

    def test_ipv6_and_ipv4_parsing(self) -> None:
        s, _ = from_dict({"listen": ["[::]:25", "[::1]:2525", "127.0.0.1:2525", "0.0.0.0:65535"]})
        self.assertEqual(s.listen_addresses(),
                         [("::", 25), ("::1", 2525), ("127.0.0.1", 2525), ("0.0.0.0", 65535)])


class DomainAndAddressTest(unittest.TestCase):
    def test_domain_syntax(self) -> None:
        ok = ["example.com", "a-b.example.com", "x" * 63 + ".com", "localhost", "1example.net"]
        for d in ok:
            with self.subTest(ok=d):
                self.assertEqual(from_dict({"primary_domain": d})[0].primary_domain, d)
        long_name = ".".join(["a" * 60] * 5)  # 304 characters
        for d in ["", "-a.com", "a-.com", "a..com", ".a.com", "a.com.", "a_b.com", "x" * 64 + ".com",
                  "exämple.com", "a b.com", long_name, 7]:
            with self.subTest(bad=d):
                with self.assertRaises(ConfigError) as cm:
                    from_dict({"primary_domain": d})
                self.assertEqual([e.key for e in cm.exception.errors], ["primary_domain"])

    def test_additional_domains(self) -> None:
        s, _ = from_dict({"primary_domain": "example.com", "additional_domains": ["B.example", "c.example"]})
        self.assertEqual(s.additional_domains, ["b.example", "c.example"])
        for extra in (["EXAMPLE.com"], ["b.example", "B.Example"], ["bad_name"], "b.example"):
            with self.subTest(extra=extra):
                with self.assertRaises(ConfigError) as cm:
                    from_dict({"primary_domain": "example.com", "additional_domains": extra})
                self.assertIn("additional_domains", str(cm.exception))

    def test_trusted_networks_matching(self) -> None:
        s = Settings()
        self.assertTrue(s.is_trusted("127.0.0.1"))
        self.assertTrue(s.is_trusted("127.200.3.4"))
        self.assertTrue(s.is_trusted("::1"))
        self.assertTrue(s.is_trusted("::ffff:127.0.0.1"))
        self.assertFalse(s.is_trusted("10.0.0.1"))
        self.assertFalse(s.is_trusted("::2"))
        for garbage in ("", "garbage", "1.2.3", "[::1]"):
            self.assertFalse(s.is_trusted(garbage), garbage)

    def test_custom_and_empty_trusted_networks(self) -> None:
        s, _ = from_dict({"trusted_networks": ["192.168.1.7/24", "2001:db8::/32"]})
        self.assertEqual([str(n) for n in s.trusted_network_objects()], ["192.168.1.0/24", "2001:db8::/32"])
        self.assertTrue(s.is_trusted("192.168.1.200"))
        self.assertTrue(s.is_trusted("::ffff:192.168.1.200"))
        self.assertTrue(s.is_trusted("2001:db8::5"))
        self.assertFalse(s.is_trusted("::ffff:192.168.2.1"))
        self.assertFalse(s.is_trusted("127.0.0.1"))
        empty, _ = from_dict({"trusted_networks": []})
        self.assertFalse(empty.is_trusted("127.0.0.1"))
        with self.assertRaises(ConfigError) as cm:
            from_dict({"trusted_networks": ["10.0.0.0/8", "10.0.0.0/33"]})
        self.assertIn('trusted_networks[1] = "10.0.0.0/33"', str(cm.exception))

    def test_dns_servers(self) -> None:
        good = ["192.0.2.53", "192.0.2.53:5353", "2001:db8::53", "[2001:db8::53]:53"]
        self.assertEqual(from_dict({"dns_servers": good})[0].dns_servers, good)
        for bad in ["dns.example", "192.0.2.53:0", "192.0.2.53:70000", "[192.0.2.53]:53", 53]:
            with self.subTest(bad=bad):
                with self.assertRaises(ConfigError) as cm:
                    from_dict({"dns_servers": [bad]})
                self.assertIn("dns_servers[0]", str(cm.exception))

    def test_smarthost_rules(self) -> None:
        for mode in config.TLS_MODES:
            self.assertEqual(from_dict({"smarthost": {"tls": mode}})[0].smarthost.tls, mode)
        for host in ("smtp.example.com", "192.0.2.1", "2001:db8::1"):
            sh = {"enabled": True, "host": host}
            self.assertEqual(from_dict({"smarthost": sh})[0].smarthost.host, host)
        cases = {
            "smarthost.host": {"enabled": True},
            "smarthost.account": {"authenticate": True, "password": "x"},
            "smarthost.tls": {"tls": "ssl"},
        }
        for key, sh in cases.items():
            with self.subTest(key=key):
                with self.assertRaises(ConfigError) as cm:
                    from_dict({"smarthost": sh})
                self.assertEqual([e.key for e in cm.exception.errors], [key])
        with self.assertRaises(ConfigError):
            from_dict({"smarthost": {"host": "bad host"}})


class AntispamSettingsTest(unittest.TestCase):
    def errors(self, data: dict) -> list[FieldError]:
        with self.assertRaises(ConfigError) as cm:
            from_dict(data)
        return cm.exception.errors

    def test_defaults_a_desktop_user_can_leave_alone(self) -> None:
        spam = from_dict({})[0].antispam
        self.assertEqual((spam.rdns, spam.spf, spam.dkim, spam.dmarc), ("tag", "tag", "tag", "reject"))
        self.assertEqual(spam.dnsbl, [])
        self.assertFalse(spam.greylisting)
        self.assertEqual(spam.greeting_pause_ms, 0)
        self.assertEqual(spam.connection_rate, 60)

    def test_each_action_must_be_off_tag_or_reject(self) -> None:
        for key in ("rdns", "dnsbl_action", "spf", "dkim", "dmarc"):
            with self.subTest(key=key):
                errors = self.errors({"antispam": {key: "drop"}})
                self.assertEqual([e.key for e in errors], [f"antispam.{key}"])
                self.assertIn('"off", "tag", "reject"', errors[0].message)

    def test_zones_lists_and_rules_name_the_bad_entry(self) -> None:
        errors = self.errors({"antispam": {"dnsbl": ["zen.spamhaus.org", "not a zone"],
                                           "rules": [{"name": "ok", "where": "subject", "match": "contains",
                                                      "pattern": "x", "action": "junk"},
                                                     {"name": "slow", "where": "body", "match": "regex",
                                                      "pattern": "(a+)+$", "action": "reject"}]},
                              "access": {"whitelist": ["192.0.2.0/24", "300.1.1.1/8"],
                                         "blacklist": ["*@example.com", 5]}})
        by_key = {e.key: e.message for e in errors}
        self.assertIn("antispam.dnsbl[1]", by_key["antispam.dnsbl"])
        self.assertIn("antispam.rules[1]", by_key["antispam.rules"])
        self.assertIn("access.whitelist[1]", by_key["access.whitelist"])
        self.assertIn("access.blacklist[1]", by_key["access.blacklist"])

    def test_ranges(self) -> None:
        for key, lo, hi in (("connection_rate", 0, 100_000), ("greeting_pause_ms", 0, 30_000),
                            ("tls_handshake_seconds", 1, 600), ("greylist_delay_seconds", 1, 86_400),
                            ("max_unknown_recipients", 1, 1000)):
            with self.subTest(key=key):
                self.assertEqual(getattr(from_dict({"antispam": {key: hi}})[0].antispam, key), hi)
                errors = self.errors({"antispam": {key: lo - 1}})
                self.assertIn(f"allowed {lo}–{hi}", errors[0].message)


class UnknownKeysTest(TempDirTest):
    def test_unknown_keys_warn_and_top_level_ones_are_kept(self) -> None:
        self.write({"future_feature": {"a": [1, 2]}, "incoming": {"max_connections": 30, "foo": 1}})
        settings, warnings = load(self.path)
        self.assertEqual(settings.incoming.max_connections, 30)
        self.assertEqual(settings.extra, {"future_feature": {"a": [1, 2]}})
        self.assertEqual(len(warnings), 2)
        self.assertIn(f"{self.path}: unknown setting 'future_feature' ignored", warnings)
        self.assertIn(f"{self.path}: unknown setting 'incoming.foo' ignored", warnings)

    def test_section_that_is_not_an_object_is_an_error(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            from_dict({"incoming": 5})
        self.assertEqual([e.key for e in cm.exception.errors], ["incoming"])
        self.assertIn("incoming = 5", str(cm.exception))

    def test_duplicate_key_warns(self) -> None:
        self.write('{"max_message_size_mb": 10, "max_message_size_mb": 20}')
        settings, warnings = load(self.path)
        self.assertEqual(settings.max_message_size_mb, 20)
        self.assertEqual(len(warnings), 1)
        self.assertIn("max_message_size_mb", warnings[0])


class LoadErrorTest(TempDirTest):
    def assert_untouched_by_load(self, text: str) -> ConfigError:
        self.write(text)
        os.utime(self.path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        before = (self.path.read_bytes(), self.path.stat().st_mtime_ns)
        with self.assertRaises(ConfigError) as cm:
            load(self.path)
        self.assertEqual((self.path.read_bytes(), self.path.stat().st_mtime_ns), before)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ismail.json"])
        return cm.exception

    def test_bad_json_names_file_line_and_column(self) -> None:
        err = self.assert_untouched_by_load('{\n  "listen": ["0.0.0.0:25"],\n  "primary_domain" "x"\n}\n')
        self.assertEqual(err.path, self.path)
        self.assertTrue(str(err).startswith(f"{self.path}: "), str(err))
        self.assertIn("line 3", str(err))
        self.assertIn("column 20", str(err))

    def test_invalid_values_name_file_and_leave_it_alone(self) -> None:
        err = self.assert_untouched_by_load('{"incoming": {"max_connections": 500}}')
        self.assertEqual(str(err), f"{self.path}: incoming.max_connections = 500 is out of range (allowed 10–100)")

    def test_not_an_object(self) -> None:
        err = self.assert_untouched_by_load("[1, 2]")
        self.assertIn(str(self.path), str(err))
        self.assertIn("JSON object", str(err))

    def test_not_utf8(self) -> None:
        self.path.write_bytes(b'{"primary_domain": "\xff"}')
        with self.assertRaises(ConfigError) as cm:
            load(self.path)
        self.assertIn(str(self.path), str(cm.exception))

    def test_byte_order_mark_is_accepted(self) -> None:
        self.path.write_bytes(b'\xef\xbb\xbf{"max_message_size_mb": 7}')
        self.assertEqual(load(self.path)[0].max_message_size_mb, 7)


class SaveTest(TempDirTest):
    def sample(self) -> Settings:
        return Settings(
            server_name="mx.example.com", primary_domain="example.com",
            additional_domains=["example.org"], listen=["0.0.0.0:2525", "[::]:2525"],
            incoming=IncomingSettings(max_connections=40, max_per_host=2), max_message_size_mb=25,
            trusted_networks=[], dns_servers=["192.0.2.53"],
            smarthost=SmartHostSettings(enabled=True, host="smtp.example.net", port=587,
                                        authenticate=True, account="me", password="pw", tls="tls"),
            retry=RetrySettings(first_seconds=60, warn_hours=4),
        )

    def test_round_trip(self) -> None:
        original = self.sample()
        save(original, self.path)
        loaded, warnings = load(self.path)
        self.assertEqual(loaded, original)
        self.assertEqual(warnings, [])
        self.assertEqual(json.loads(self.path.read_text(encoding="utf-8"))["incoming"],
                         {"max_connections": 40, "max_per_host": 2})

    def test_unknown_keys_survive_save(self) -> None:
        self.write({"future_feature": {"on": True}, "max_message_size_mb": 9})
        settings, _ = load(self.path)
        settings.max_message_size_mb = 10
        save(settings, self.path)
        on_disk = json.loads(self.path.read_text(encoding="utf-8"))
        self.assertEqual(on_disk["future_feature"], {"on": True})
        self.assertNotIn("extra", on_disk)
        reloaded, _ = load(self.path)
        self.assertEqual(reloaded, settings)

    def test_invalid_settings_refused_and_old_file_kept(self) -> None:
        save(self.sample(), self.path)
        before = self.path.read_bytes()
        bad = self.sample()
        bad.incoming.max_connections = 5
        bad.listen = ["0.0.0.0"]
        with self.assertRaises(ConfigError) as cm:
            save(bad, self.path)
        self.assertEqual(sorted(e.key for e in cm.exception.errors), ["incoming.max_connections", "listen"])
        self.assertIn(str(self.path), str(cm.exception))
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["ismail.json"])

    def test_invalid_settings_not_written_when_no_file_exists(self) -> None:
        with self.assertRaises(ConfigError):
            save(Settings(max_message_size_mb=True), self.path)
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_no_temp_files_left_and_folder_created(self) -> None:
        path = self.dir / "new" / "folder" / "ismail.json"
        save(self.sample(), path)
        save(Settings(), path)  # second save replaces the first
        self.assertEqual([p.name for p in path.parent.iterdir()], ["ismail.json"])
        self.assertEqual(load(path)[0], Settings())

    def test_validate_for_gui(self) -> None:
        errors = validate(Settings(incoming=IncomingSettings(max_connections=5)))
        self.assertEqual(errors, [FieldError("incoming.max_connections",
                                             "incoming.max_connections = 5 is out of range (allowed 10–100)")])

    def test_to_dict_and_redacted(self) -> None:
        s = self.sample()
        s.extra = {"future": 1}
        d = config.to_dict(s)
        self.assertEqual(d["smarthost"]["password"], "pw")
        self.assertEqual(d["future"], 1)
        self.assertNotIn("extra", d)
        s.extra["max_message_size_mb"] = 1  # a stray copy of a known key must not override it
        self.assertEqual(config.to_dict(s)["max_message_size_mb"], 25)
        r = config.redacted(s)
        self.assertEqual(r["smarthost"]["password"], "********")
        self.assertNotIn("pw", json.dumps(r))
        self.assertEqual(r["smarthost"]["account"], "me")
        self.assertEqual(s.smarthost.password, "pw")  # the settings themselves are untouched
        self.assertEqual(config.redacted(Settings())["smarthost"]["password"], "")


class DataDirTest(unittest.TestCase):
    def test_cli_value_wins(self) -> None:
        env = {"ISMAIL_HOME": "/env/home", "XDG_DATA_HOME": "/xdg"}
        self.assertEqual(config.resolve_data_dir("/cli/dir", env, "linux"), Path("/cli/dir"))
        self.assertEqual(config.resolve_data_dir(None, env, "linux"), Path("/env/home"))
        self.assertEqual(config.settings_path(Path("/cli/dir")), Path("/cli/dir") / "ismail.json")

    def test_ismail_home(self) -> None:
        for platform in ("linux", "win32", "darwin"):
            env = {"ISMAIL_HOME": "/srv/ismail", "APPDATA": "C:\\Users\\u\\AppData\\Roaming",
                   "XDG_DATA_HOME": "/xdg"}
            self.assertEqual(config.default_data_dir(env, platform), Path("/srv/ismail"))
        self.assertEqual(config.default_data_dir({"ISMAIL_HOME": "", "XDG_DATA_HOME": "/xdg"}, "linux"),
                         Path("/xdg/ismail"))

    def test_windows(self) -> None:
        appdata = "C:\\Users\\u\\AppData\\Roaming"
        self.assertEqual(config.default_data_dir({"APPDATA": appdata, "XDG_DATA_HOME": "/xdg"}, "win32"),
                         Path(appdata) / "ISMail")
        self.assertEqual(config.default_data_dir({}, "win32"),
                         Path.home() / "AppData" / "Roaming" / "ISMail")

    def test_xdg(self) -> None:
        self.assertEqual(config.default_data_dir({"XDG_DATA_HOME": "/data", "APPDATA": "C:\\x"}, "linux"),
                         Path("/data") / "ismail")
        default = Path.home() / ".local" / "share" / "ismail"
        self.assertEqual(config.default_data_dir({}, "linux"), default)
        self.assertEqual(config.default_data_dir({"XDG_DATA_HOME": ""}, "linux"), default)


if __name__ == "__main__":
    unittest.main()
