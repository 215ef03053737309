"""One end: a sans-I/O client core and its two drivers."""
