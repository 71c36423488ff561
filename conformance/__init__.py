"""The p-RoPE conformance suite (README.md, "Check your own implementation")."""
