"""Run pyspf over test scenarios, for tests/test_spf_suite.py: JSON in, JSON out.

Run by the system interpreter that has Debian's python3-spf (``/usr/bin/python3
tests/spf_pyspf_runner.py``), not by the one running the tests.  stdin:
``{"scenarios": [{"zonedata": {...}, "cases": {"key": {"host", "mailfrom", "helo",
"strict"}}}]}`` with zonedata as in the RFC 7208 test suite's YAML.  stdout:
``{"key": {"result": ..., "explanation": ...}}`` (or ``{"error": ...}``).

pyspf's DNS is replaced the way its own test driver (test/testspf.py in the pyspf source
distribution) does it, so pyspf sees the zone exactly as the suite's authors meant.
"""
import json
import socket
import sys

import spf

zonedata = {}
OLD_RESULTS = {"unknown": "permerror", "error": "temperror"}


def dns_lookup(name, qtype, strict=True, timeout=None, level=0):
    """testspf.DNSLookup: yields ((name, type), value) like pyspf's pydns back end."""
    try:
        timeout = True
        labels = []
        for label in name.split("."):
            if label:
                if len(label) > 63:
                    raise spf.TempError("DNS label too long")
                labels.append(label)
        name = ".".join(labels)
        for entry in zonedata[name.lower()]:
            if entry == "TIMEOUT":
                if timeout:
                    raise spf.TempError("DNS timeout")
                return
            rtype, value, owner = entry
            if rtype == qtype:
                timeout = False
            if value == "TIMEOUT":
                if rtype == qtype:
                    raise spf.TempError("DNS timeout")
                continue
            if rtype == "AAAA":
                value = bytes(socket.inet_pton(socket.AF_INET6, value))
            elif rtype in ("TXT", "SPF"):
                value = tuple(s.encode("utf-8") for s in value)
            yield ((owner, rtype), value)
            if not level and rtype == "CNAME":
                for more in dns_lookup(value, qtype, strict, timeout, 1):
                    yield more
    except KeyError:
        if name.startswith("error."):
            raise spf.TempError("DNS timeout")


def records(entries, name):
    """testspf.getrdata: SPF records double as TXT where a name has no TXT of its own."""
    generated, generate = [], True
    for entry in entries:
        if not isinstance(entry, dict):
            yield entry
            continue
        for rtype, value in entry.items():
            if rtype in ("TXT", "SPF") and isinstance(value, str):
                value = (value,)
            if rtype == "TXT":
                generate = False
            elif rtype == "SPF" and generate:
                generated.append(("TXT", value, name))
            if value != ("NONE",):
                yield (rtype, value, name)
    if generate:
        yield from generated


def run_case(case):
    query = spf.query(i=case["host"], s=case["mailfrom"], h=case["helo"], strict=case.get("strict", True))
    query.set_default_explanation("DEFAULT")
    result, _code, explanation = query.check()
    return {"result": OLD_RESULTS.get(result, result), "explanation": explanation}


def main():
    global zonedata
    spf.DNSLookup = dns_lookup
    request = json.load(sys.stdin)
    out = {}
    for scenario in request["scenarios"]:
        zonedata = {name.lower(): list(records(entries, name)) for name, entries in scenario["zonedata"].items()}
        for key, case in scenario["cases"].items():
            try:
                out[key] = run_case(case)
            except Exception as e:  # one broken case must not hide the others' answers
                out[key] = {"error": f"{type(e).__name__}: {e}"}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
