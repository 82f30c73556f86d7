"""dclnet.models."""
