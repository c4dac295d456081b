"""Exit statuses the commands share."""

#: The exit status of a command stopped by Ctrl+C (128 + SIGINT), as shells report one.
INTERRUPTED = 130
