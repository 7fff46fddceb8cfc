"""Defaults shared by the nightly modules (checks, report formats, image extensions)."""

ALL_CHECKS = ("antivirus", "patch", "license", "migration")
REPORT_FORMATS_DEFAULT = ("json", "html", "sarif")
IMAGE_EXTENSIONS = ("qcow2", "qcow", "img", "raw", "vmdk", "vhd", "vhdx")
