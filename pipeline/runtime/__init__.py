"""The embedded runtime: the Tansu broker, child processes and their supervision, the benchmark."""
