"""Set-up, process launch and placement on a host."""
