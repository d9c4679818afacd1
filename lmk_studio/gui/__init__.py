"""Qt widgets. Talks to the engine only through jobs run in a separate process."""
