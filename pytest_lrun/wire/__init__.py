"""The wire layer: what crosses from a container's pytest to the host, parsed as data.

* :mod:`.events`: the inner reporter's event lines (the reporter itself is :mod:`pytest_lrun.inner`);
* :mod:`.junit`: the inner run's JUnit XML.

Nothing here knows a store, an engine or pytest's reports: it turns bytes into records.
"""
