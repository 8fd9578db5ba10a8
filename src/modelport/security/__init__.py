"""API keys, scopes and the guard that checks them; TLS files."""
