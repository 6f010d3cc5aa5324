"""Built-in model variants of metagen_ppl (one Pyro model function per file)."""
