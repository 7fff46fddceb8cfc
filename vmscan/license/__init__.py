"""Licences: SPDX normalisation, dpkg copyright parsing, policy, Windows inventory, fleet."""
