"""Aliases: modelfiles in three syntaxes, compiled into a registry, stored and watched, and the layered resolver
that turns a name and the request's overrides into one :class:`~hllama.aliases.resolve.Resolved`."""
