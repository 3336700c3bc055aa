"""The FUSE front end: `ops` (requests → FileSystem) and `mount` (serving loop)."""
