"""S3 protocol layer over the cartridge filesystem API."""
