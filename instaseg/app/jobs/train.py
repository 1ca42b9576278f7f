"""TODO(train job kind): filled in by its owner."""
