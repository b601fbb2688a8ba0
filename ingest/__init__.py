"""Sources of behaviour events: real dataset adapters, a synthetic generator, and replay into the landing zone."""
