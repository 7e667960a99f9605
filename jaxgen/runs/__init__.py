"""What works on a run's workdir: restoring it, drawing samples from it, scoring them."""
