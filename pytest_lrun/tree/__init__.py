"""The tree layer: a test directory (or a build context) on disk, and tar streams in and out.

* :mod:`.ignores`: which paths are left out (``.lrunignore``, ``.dockerignore``);
* :mod:`.hashing`: the one walk, the xxh3-128 digest, its stat cache and the snapshot that ships;
* :mod:`.archive`: tar for upload;
* :mod:`.extract`: the hostile tar streams a container gives back, read safely.
"""
