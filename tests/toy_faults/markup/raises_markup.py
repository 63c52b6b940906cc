"""A plugin file whose import fails with rich markup in its message: every command must still work."""

raise ImportError("this plugin needs the extra [/gpu] and [bold]more[/bold]")
