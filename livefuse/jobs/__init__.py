"""The job service: face-swap jobs on files, submitted over HTTP and run by a pool of
workers (inside ``livefuse serve``) or by ``livefuse worker`` processes through Redis.

Layers, top to bottom: ``api`` (HTTP routes) and ``client`` (the ``jobs`` CLI) → ``service``
(submit/cancel/list over a backend) → ``pool`` / ``rqueue`` (who runs jobs) → ``runner``
(one job through the file pipeline) → ``store`` (SQLite records), ``files`` (job
directories), ``options`` (job options as ``Settings``), ``model`` (the values).
"""
