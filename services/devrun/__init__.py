"""`make run`: a supervisor that runs the system on one machine and restarts what exits."""
