"""Host-side vetting of what qemu will open: header parsers, chain vetting, source kinds."""
