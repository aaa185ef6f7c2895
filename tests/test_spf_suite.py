"""SPF against the standard's own test suite (RFC 7208, openspf.org release 2014.04) and
against pyspf, the reference implementation whose authors wrote that suite.

The suite is ``test/rfc7208-tests.yml`` inside pyspf's source distribution, found at
$ISMAIL_PYSPF_SDIST or .ci/downloads/pyspf-2.0.14.tar.gz (.ci/run downloads it; it is not
committed).  Reading it needs PyYAML, which only this test uses.  Each YAML document is a
scenario: ``zonedata`` (the DNS) and ``tests`` (client address, MAIL FROM, HELO, the
acceptable results and, for some, the explanation).  Zone conventions, as the suite's
drivers implement them (pyspf's test/testspf.py):

  * "SPF" (type 99) records are never asked for - RFC 7208 dropped the type - but a name
    with SPF records and no TXT record has its SPF records served as TXT too; that is how
    the suite writes most records.  "TXT: NONE" stops it.
  * A bare "TIMEOUT" entry: queries for a type with no record listed before it time out.
  * A name not listed is NXDOMAIN; a listed name without the type asked is NODATA.

Without the tarball, PyYAML or (for the agreement test) pyspf under /usr/bin/python3, the
tests skip on a developer machine and fail when CI=true.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import subprocess
import tarfile
import unittest
from pathlib import Path

from ismail.mailauth.spf import check_mail_from
from tests.test_spf import FakeDNS

ROOT = Path(__file__).resolve().parent.parent
SDIST = "pyspf-2.0.14.tar.gz"
SUITE_MEMBER = "pyspf-2.0.14/test/rfc7208-tests.yml"
SYSTEM_PYTHON = "/usr/bin/python3"
RUNNER = Path(__file__).resolve().parent / "spf_pyspf_runner.py"

# "scenario description/case": why ISMail's answer is not one the suite accepts.  A case
# listed here that passes makes the test fail, so the list stays true.
KNOWN_DIFFERENCES: dict[str, str] = {}

# Cases where pyspf 2.0.14 itself gives an answer the suite does not accept; they are not
# compared (ISMail is held to the suite there).  Checked the same way: if pyspf comes to
# agree with the suite, the test says so.
PYSPF_DISAGREES: dict[str, str] = {}

# Cases where the suite accepts several results and ISMail and pyspf pick different ones.
BOTH_ACCEPTED: dict[str, str] = {}


def _missing(test: unittest.TestCase, why: str) -> None:
    if os.environ.get("CI") == "true":
        test.fail(why)
    test.skipTest(why)


@functools.lru_cache(maxsize=1)
def _load() -> tuple[list[dict], str]:
    """(the suite's scenarios, "") or ([], why they cannot be read)."""
    try:
        import yaml
    except ImportError:
        return [], "PyYAML is not installed (python3 -m pip install pyyaml)"
    path = Path(os.environ.get("ISMAIL_PYSPF_SDIST") or ROOT / ".ci" / "downloads" / SDIST)
    if not path.is_file():
        return [], (f"{path} is missing (python3 -m pip download --no-deps --no-binary :all: "
                    f"pyspf==2.0.14 -d {path.parent})")
    with tarfile.open(path) as tar:
        text = tar.extractfile(SUITE_MEMBER).read()
    return [s for s in yaml.safe_load_all(text) if s], ""


def _scenarios(test: unittest.TestCase) -> list[dict]:
    scenarios, why = _load()
    if why:
        _missing(test, why)
    return scenarios


def _cases(scenarios: list[dict]):
    """("scenario/case", scenario, case) for every case of the suite."""
    for scenario in scenarios:
        for name, case in scenario["tests"].items():
            yield f"{scenario['description']}/{name}", scenario, case


def zone_from(zonedata: dict) -> dict[str, list[tuple[str, object]]]:
    """The suite's zonedata as a FakeDNS zone (conventions in the module docstring)."""
    zone: dict[str, list[tuple[str, object]]] = {}
    for name, entries in zonedata.items():
        records: list[tuple[str, object]] = []
        spf_texts: list[str] = []
        has_txt = False
        for entry in entries:
            if entry == "TIMEOUT":
                records.append(("TIMEOUT", None))
                continue
            (rtype, value), = entry.items()
            if rtype in ("TXT", "SPF") and value != "TIMEOUT":
                value = value if isinstance(value, str) else "".join(value)
            if rtype == "SPF":
                spf_texts.append(value)
                continue
            if rtype == "TXT":
                has_txt = True
                if value == "NONE":
                    continue
            elif rtype == "MX":
                value = (value[0], value[1])
            elif rtype == "AAAA" and value != "TIMEOUT":
                value = str(ipaddress.ip_address(value))
            records.append((rtype, value))
        if not has_txt:
            records += [("TXT", text) for text in spf_texts]
        zone[name] = records
    return zone


def _ismail(scenario: dict, case: dict) -> tuple[str, str]:
    dns = FakeDNS(zone_from(scenario["zonedata"]))
    got = check_mail_from(case["host"], case["mailfrom"], case["helo"], dns, default_explanation="DEFAULT")
    return got.result, got.explanation


def _accepted(case: dict) -> list[str]:
    return case["result"] if isinstance(case["result"], list) else [case["result"]]


def _passes(case: dict, result: str, explanation: str) -> bool:
    return result in _accepted(case) and ("explanation" not in case or explanation == case["explanation"])


class RFC7208SuiteTest(unittest.TestCase):
    def test_every_case(self):
        scenarios = _scenarios(self)
        count = 0
        for key, scenario, case in _cases(scenarios):
            count += 1
            with self.subTest(case=key):
                result, explanation = _ismail(scenario, case)
                ok = _passes(case, result, explanation)
                if key in KNOWN_DIFFERENCES:
                    self.assertFalse(ok, f"{key} passes now: take it out of KNOWN_DIFFERENCES")
                else:
                    self.assertTrue(ok, f"{key}: got {result} {explanation!r}, the suite wants "
                                        f"{case['result']} {case.get('explanation', '')!r} ({case.get('spec')})")
        self.assertGreater(count, 150, "the suite should hold some 190 cases")

    def test_lists_name_real_cases(self):
        keys = {key for key, _, _ in _cases(_scenarios(self))}
        for table in (KNOWN_DIFFERENCES, PYSPF_DISAGREES, BOTH_ACCEPTED):
            self.assertEqual(set(), set(table) - keys)


class PyspfAgreementTest(unittest.TestCase):
    """ISMail gives the same result as pyspf (Debian's python3-spf) on every suite case."""

    @classmethod
    def _pyspf_results(cls, test: unittest.TestCase, scenarios: list[dict]) -> dict:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", "import spf"], capture_output=True) \
            if os.path.exists(SYSTEM_PYTHON) else None
        if probe is None or probe.returncode != 0:
            _missing(test, f"pyspf is not importable by {SYSTEM_PYTHON} (apt-get install python3-spf)")
        request = {"scenarios": [
            {"zonedata": s["zonedata"],
             "cases": {f"{s['description']}/{name}": {"host": c["host"], "mailfrom": c["mailfrom"],
                                                       "helo": c["helo"], "strict": c.get("strict", True)}
                       for name, c in s["tests"].items()}}
            for s in scenarios]}
        done = subprocess.run([SYSTEM_PYTHON, str(RUNNER)], input=json.dumps(request), capture_output=True,
                              text=True, timeout=300, cwd=str(ROOT))
        test.assertEqual(0, done.returncode, done.stderr[-2000:])
        return json.loads(done.stdout)

    def test_same_result_as_pyspf(self):
        scenarios = _scenarios(self)
        theirs = self._pyspf_results(self, scenarios)
        compared = 0
        for key, scenario, case in _cases(scenarios):
            with self.subTest(case=key):
                pyspf = theirs[key]
                self.assertNotIn("error", pyspf)
                pyspf_ok = _passes(case, pyspf["result"], pyspf["explanation"])
                if key in PYSPF_DISAGREES:
                    self.assertFalse(pyspf_ok, f"pyspf agrees with the suite on {key} now: "
                                               "take it out of PYSPF_DISAGREES")
                    continue
                self.assertTrue(pyspf_ok, f"pyspf gives {pyspf} on {key}, the suite wants {case['result']}: "
                                          "list it in PYSPF_DISAGREES with why")
                result, _ = _ismail(scenario, case)
                if key in BOTH_ACCEPTED:
                    self.assertNotEqual(pyspf["result"], result, f"{key}: same now: take it out of BOTH_ACCEPTED")
                    continue
                self.assertEqual(pyspf["result"], result, f"{key}: pyspf says {pyspf['result']}, ISMail {result}")
                compared += 1
        self.assertGreater(compared, 150)


if __name__ == "__main__":
    unittest.main()
