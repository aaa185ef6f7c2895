"""ISMail: a desktop mail server (SMTP in, local Maildirs, SmartHost or direct delivery out)."""

__version__ = "0.1.0"
