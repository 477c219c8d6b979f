"""Live sessions across machines: ``livefuse serve`` workers register in Redis; ``livefuse
gateway`` is the one public address and routes each session's requests to its owner."""
