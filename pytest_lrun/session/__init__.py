"""The session layer: one pytest invocation's dispatch, from collected directories to reports.

:mod:`.session` holds :class:`~.session.LrunSession`, the plugin object registered
when an ``--lrun-*`` option switches pytest-lrun on.
"""
