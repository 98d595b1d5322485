"""Object-store backends, segment upload, remote retention and remote reads."""
