"""Built-in method plugins: one module each, registered through the same hooks as third parties."""
