"""Built-in plugins, registered through the `runner.plugins` entry-point group like any other."""
