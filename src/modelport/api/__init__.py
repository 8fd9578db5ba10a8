"""Protocol adapters: parse, call the core, encode, map errors. No business logic."""
