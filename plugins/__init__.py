"""The built-in mechanism plugins (installed as ``attnbench_plugins``).

Each is registered in pyproject.toml under the ``attnbench.mechanisms`` entry-point group, the
same way a third-party plugin registers (see examples/attnbench-example-plugin).
"""
