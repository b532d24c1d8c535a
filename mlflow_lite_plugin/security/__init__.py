"""Secrets: the one detector and scrubber of credentials in everything that leaves the process."""
