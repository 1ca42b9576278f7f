"""TODO(export job kind): filled in by its owner."""
