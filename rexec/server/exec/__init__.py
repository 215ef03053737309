"""The process layer: it knows no sessions and no frames."""
