"""Many hosts at once (client side only): inventory, node sets, fan-out, batches."""
