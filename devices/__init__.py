"""Benchmark targets: this machine, SSH boards, Android, emulated aarch64, estimates."""
