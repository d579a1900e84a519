"""`cvs-export`: plan, build and verify engines."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Checkpoint → ONNX parts → engines, validated against the PyTorch reference."""
