"""Several calls composed: multi-step chains and A/B tests with their statistics."""
