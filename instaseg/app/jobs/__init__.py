"""Background jobs: kinds of work (``kinds``), the queue clients add to, and the worker that runs them."""
