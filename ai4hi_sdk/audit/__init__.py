"""Append-only, hash-chained logs (egress log, later the privacy ledger and decision log)."""
