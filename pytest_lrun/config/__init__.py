"""The config layer: what a user declares, read and checked before anything runs.

* :mod:`.settings`: every ``--lrun-*`` option with its ini key and ``LRUN_*`` variable;
* :mod:`.values`: the parsers of their values (seconds, sizes, lists, the store's URL...),
  shared with machine tables and plans;
* :mod:`.machines`: machine names and tables, resolved to connection settings;
* :mod:`.contexts`: the engines Docker's own configuration names (its contexts, ``DOCKER_*``);
* :mod:`.remote`: what a machine table naming a Remote Execution API service declares;
* :mod:`.tables`: one TOML table read key by key, with the build rules machine tables and
  plans share;
* :mod:`.builds`: Dockerfile builds declared in place of an image;
* :mod:`.plan`: plan files; :mod:`.select`: which inner tests an invocation selects;
* :mod:`.shards`: the shard options; :mod:`.quarantine`: quarantine files (``--lrun-quarantine``).

A bad value is a :class:`~pytest_lrun.core.errors.ConfigError` or
:class:`~pytest_lrun.core.errors.PlanError` naming the file, field or option.
"""
