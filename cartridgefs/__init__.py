"""Cartridge: a whole filesystem in one file, served through FUSE and S3."""
