"""Antivirus support: clamd client and manager, signature files, verdict cache, streaming."""
