"""The kernel: shared types, errors, atomic file I/O, environment facts. Imports nothing of the project."""
