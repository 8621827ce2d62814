"""Files shipped INTO the containers, never imported by pytest-lrun on the host.

Each file here is copied into a run's upload under ``/lrun/`` (see
:func:`pytest_lrun.wire.events.reporter_file`) and runs with the image's own Python
and pytest, so it may import nothing but the standard library and pytest and
must work on Python >= 3.8 with pytest >= 7.0.

* :mod:`.lrun_reporter` is the pytest plugin loaded inside the container: it writes
  each inner test's events to the stream the host reads back (:mod:`pytest_lrun.wire.events`).
"""
