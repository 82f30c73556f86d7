"""dclnet.evaluation."""
