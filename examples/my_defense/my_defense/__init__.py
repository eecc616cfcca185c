"""An example third-party defense package for the bench suite (copy it to start your own)."""
