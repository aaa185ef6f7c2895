"""The SRS secret: the key of the HMAC that makes our SRS addresses unforgeable.

Kept in DATA/srs.secret as base64, protected like the SmartHost password (DPAPI on
Windows, a file only its owner may read elsewhere).  Made on first use.  A file that
cannot be read back is reported and set aside, never silently overwritten; SRS
addresses handed out under the old secret are then refused as forged, which is
what they would be indistinguishable from.
"""
from __future__ import annotations

import base64
import binascii
import logging
import secrets
import threading
import time
from pathlib import Path

from ..fsutil import atomic_write
from ..platform.protect import ProtectError, protect, unprotect

log = logging.getLogger("ismail.srs")

SECRET_FILE = "srs.secret"
SECRET_BYTES = 32
_lock = threading.Lock()


def load_srs_secret(data_dir: Path) -> bytes:
    path = Path(data_dir) / SECRET_FILE
    with _lock:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = None
        except (OSError, UnicodeDecodeError) as e:
            raise OSError(f"cannot read the SRS secret {path}: {e}") from e
        if text is not None:
            try:
                secret = base64.b64decode(unprotect(text), validate=True)
                if len(secret) >= 16:
                    return secret
                problem = f"holds {len(secret)} bytes, fewer than 16"
            except (ProtectError, binascii.Error, ValueError) as e:
                problem = str(e) or "is not base64"
            aside = path.with_name(f"{SECRET_FILE}.corrupt-{int(time.time())}")
            path.replace(aside)
            log.error("the SRS secret %s %s: set aside as %s; a new one is made (bounces to "
                      "forwarded mail of the old one are refused)", path, problem, aside.name)
        secret = secrets.token_bytes(SECRET_BYTES)
        stored = protect(base64.b64encode(secret).decode("ascii"))
        atomic_write(path, (stored + "\n").encode("ascii"), mode=0o600)
        return secret
