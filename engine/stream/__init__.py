"""Stream workers: the runtime-independent batch core and the consumer loops that drive it."""
