"""littlehelp: a JAX/Flax experiment framework where small models help large ones."""
