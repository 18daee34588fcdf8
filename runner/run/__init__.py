"""The coordinator: one per run. It reads the input, skips finished rows, owns the journal, the
manifest, the lock, the fingerprint and resume, and hands rows to an executor."""
