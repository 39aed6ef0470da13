"""Native code that XLA calls through its FFI, built on first use: oneDNN's convolutions (:mod:`.onednn`)."""
