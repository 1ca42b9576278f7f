"""TODO(prelabel job kind): filled in by its owner."""
