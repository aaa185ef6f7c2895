"""Logging: the mail log under DATA/logs/ (rotating, like Postfix's maillog) and, for `run`, stderr."""
from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FILE = "maillog.log"
LOG_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 9  # with the live file, ten files of 5 MB


def setup_logging(data_dir: Path, to_stderr: bool = True, level: int = logging.INFO) -> list[logging.Handler]:
    """Send the `ismail` loggers to DATA/logs/maillog.log (and stderr); returns the handlers added."""
    logger = logging.getLogger("ismail")
    logger.setLevel(level)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handlers.append(logging.handlers.RotatingFileHandler(
        logs / LOG_FILE, maxBytes=LOG_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"))
    if to_stderr and sys.stderr is not None:  # a windowed .exe has no stderr
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return handlers
