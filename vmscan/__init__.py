"""vmscan: agentless scanner of virtual-machine disk images."""

__version__ = "0.1.0"
SCHEMA_VERSION = "1.1"
