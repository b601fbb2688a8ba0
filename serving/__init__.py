"""BentoML services answering real-time recommendation requests (later issues)."""
