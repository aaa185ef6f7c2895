"""Anti-spam checks: access lists, greylisting, content rules, connection rate, DNS block lists."""
