"""dclnet.losses."""
