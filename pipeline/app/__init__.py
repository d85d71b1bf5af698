"""The worker: the Faust app and its agents, the commit protocol, the model lifecycle."""
