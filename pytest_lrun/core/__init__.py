"""The core layer: what every other layer may use, and which imports nothing of pytest-lrun's above it.

* :mod:`.errors`: the one exception tree, with stable ``code`` strings and CLI exit codes;
* :mod:`.text` and :mod:`.times`: how text and record times are spelled;
* :mod:`.fsutil`, :mod:`.locking`, :mod:`.reserve`: durable writes, the one kind of lock, and
  the room kept on the state dir's file system for each live run's final record;
* :mod:`.layout`: every file and folder name of the state dir;
* :mod:`.faults`: the reliability suite's crash points.
"""
