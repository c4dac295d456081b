"""What both front ends run on: the service (resolve, refresh, delegate to a backend), the scheduler of loaded
backends, the catalog and descriptions of models, metrics and the request log."""
