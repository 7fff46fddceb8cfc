"""Checks: produce findings for one root from the guest, its packages and its manifest."""
