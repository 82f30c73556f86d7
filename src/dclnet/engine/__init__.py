"""dclnet.engine."""
