"""Other servers' REST APIs, kept working for their existing clients (TF Serving's)."""
