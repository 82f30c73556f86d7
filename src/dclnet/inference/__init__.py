"""dclnet.inference."""
