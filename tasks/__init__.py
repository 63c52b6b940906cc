"""Built-in task plugins and their objectives."""
