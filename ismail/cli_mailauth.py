"""The command line of mail authentication: ``ismail dkim ...`` and ``ismail dns DOMAIN``.

    ismail dkim list                         every local domain's keys; which one signs
    ismail dkim new DOMAIN [--bits N] [--selector S]    a new key that signs from now on
    ismail dkim import DOMAIN FILE [--selector S]       an existing key (PEM or DER)
    ismail dkim export DOMAIN SELECTOR       the private key as PEM (e.g. to move it)
    ismail dkim remove DOMAIN SELECTOR       an old key, once its DNS record is gone
    ismail dns DOMAIN [--ip ADDRESS ...] [--check]
                                             the DNS records DOMAIN needs, as zone lines;
                                             --check looks each one up and says what differs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from .config import Settings
from .mailauth import libcrypto
from .mailauth.keystore import KeyStore, KeyStoreError


def add_arguments(sub) -> None:
    dk = sub.add_parser("dkim", help="DKIM keys of the local domains (list, new, import, export, remove)")
    dk_sub = dk.add_subparsers(dest="action", metavar="ACTION")
    dk_sub.required = True
    dk_sub.add_parser("list", help="every local domain's keys, the signing one marked")
    new = dk_sub.add_parser("new", help="make a new key that signs from now on (old keys stay)")
    new.add_argument("domain")
    new.add_argument("--bits", type=int, default=0, help="1024-4096 (default: dkim.key_bits, 2048)")
    new.add_argument("--selector", default="", help='default: dkim.selector, else "ismail" and the year')
    imp = dk_sub.add_parser("import", help="use an existing private key (PEM or DER, PKCS#8 or PKCS#1)")
    imp.add_argument("domain")
    imp.add_argument("file")
    imp.add_argument("--selector", default="")
    exp = dk_sub.add_parser("export", help="print a private key as PEM")
    exp.add_argument("domain")
    exp.add_argument("selector")
    rem = dk_sub.add_parser("remove", help="delete an old key (not the one that signs)")
    rem.add_argument("domain")
    rem.add_argument("selector")
    dns = sub.add_parser("dns", help="the DNS records a local domain needs (MX, SPF, DKIM, DMARC, PTR)")
    dns.add_argument("domain")
    dns.add_argument("--ip", action="append", default=[], metavar="ADDRESS",
                     help="this server's public sending address, for SPF and the PTR advice (repeatable)")
    dns.add_argument("--check", action="store_true",
                     help="look each record up and say what is missing or different (exit 0 only if all match)")


def _local(settings: Settings, domain: str, error: Callable[[str], Exception]) -> str:
    domain = domain.lower().rstrip(".")
    if domain not in settings.local_domains():
        raise error(f"{domain} is not a local domain (local: {', '.join(sorted(settings.local_domains()))})")
    return domain


def cmd_dkim(args: argparse.Namespace, data_dir: Path, settings: Settings,
             error: Callable[[str], Exception]) -> int:
    store = KeyStore(data_dir)
    try:
        if args.action == "list":
            for domain in sorted(settings.local_domains()):
                keys = store.keys(domain)
                if not keys:
                    print(f"{domain}: no key (mail from it is not signed)")
                for k in keys:
                    mark = "signs" if k.active else "old"
                    print(f"{domain}\t{k.selector}\t{k.key.bits} bits\t{mark}\t{k.record_name}")
            print(f"RSA signatures by {libcrypto.describe()}")
            return 0
        domain = _local(settings, args.domain, error)
        if args.action == "new":
            key = store.create(domain, args.bits or settings.dkim.key_bits,
                               args.selector or settings.dkim.selector)
            print(f"{domain}: new {key.key.bits}-bit key, selector {key.selector}; it signs from now on.")
            print(f"Publish: {key.record_name} TXT \"{key.record_value}\"  (`ismail dns {domain}`)")
        elif args.action == "import":
            try:
                data = Path(args.file).read_bytes()
            except OSError as e:
                raise error(f"cannot read {args.file}: {e.strerror or e}") from e
            key = store.import_key(domain, data, args.selector or settings.dkim.selector)
            print(f"{domain}: imported a {key.key.bits}-bit key as selector {key.selector}; it signs from now on.")
        elif args.action == "export":
            sys.stdout.write(store.export_pem(domain, args.selector).decode("ascii"))
        elif args.action == "remove":
            store.remove(domain, args.selector)
            print(f"{domain}: removed the key {args.selector}")
    except (KeyStoreError, ValueError) as e:
        raise error(str(e)) from e
    except OSError as e:
        raise error(f"{e.strerror or e}") from e
    return 0


def cmd_dns(args: argparse.Namespace, data_dir: Path, settings: Settings,
            error: Callable[[str], Exception]) -> int:
    from .mailauth.records import zone_lines
    from .service import check_dns, dns_records

    domain = _local(settings, args.domain, error)
    found = dns_records(settings, data_dir, domain, args.ip)
    if not args.check:
        print("\n".join(zone_lines(found)))
        return 0
    verdicts = check_dns(settings, found)
    for v in verdicts:
        mark = "\u2713" if v.ok else "\u2717"
        print(f"{mark} {v.record.type:5} {v.record.name}: " + ("as it should be" if v.ok else v.problem))
    bad = sum(1 for v in verdicts if not v.ok)
    print(f"{len(verdicts) - bad} of {len(verdicts)} record(s) as they should be")
    return 0 if bad == 0 else 1
