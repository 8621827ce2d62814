"""The session layer: one pytest invocation's dispatch, from collected directories to reports.

* :mod:`.session`: :class:`~.session.LrunSession`, the plugin object registered when an
  ``--lrun-*`` option switches pytest-lrun on, and its main thread's loop;
* :mod:`.jobs`: the jobs of the invocation and the planner that decides them;
* :mod:`.workers`: the worker threads that run the jobs through the dispatcher;
* :mod:`.reruns`: which failed inner tests of a run go again (``--lrun-flaky-attempts``);
* :mod:`.events`: what the workers hand to the main thread, and the queue they hand it on;
* :mod:`.terminal`: the session's lines, progress and summary on pytest's terminal.
"""
