"""The protocol, sans-I/O: frames, codec, state table, proofs, addresses."""
