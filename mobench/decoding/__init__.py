"""The shared guided-decoding loop with KV caches and per-row preference weights."""
