"""Framework backends of p-RoPE. Nothing is imported here: import the backend you use,
``p_rope.backends.jax``, ``p_rope.backends.torch`` or ``p_rope.backends.array_api``."""
