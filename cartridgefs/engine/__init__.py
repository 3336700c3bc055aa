"""The cartridge engine: blocks → pages and extents → copy-on-write trees → transactions."""
