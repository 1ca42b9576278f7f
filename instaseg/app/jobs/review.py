"""TODO(review job kind): filled in by its owner."""
