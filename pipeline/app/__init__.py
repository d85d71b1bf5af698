"""The worker: the Faust app and its agents, the commit protocol, the model lifecycle."""

from schemas.compiled import search_path

__path__ = search_path(__name__, __path__)  # the compiled modules, where they match the sources
