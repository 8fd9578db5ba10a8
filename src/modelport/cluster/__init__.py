"""Scale-out through Redis: worker heartbeats (directory), online requests routed to the
workers that host a model (gateway, consumer), and the key names of it all (keys)."""
