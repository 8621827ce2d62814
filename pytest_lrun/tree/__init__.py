"""The tree layer: a test directory (or a build context) on disk, and tar streams in and out.

* :mod:`.ignores`: which paths are left out (``.lrunignore``, ``.dockerignore``);
* :mod:`.walk`: the one walk of a tree, what it contains in a fixed order;
* :mod:`.hashing`: the xxh3-128 digest of a tree and its stream format;
* :mod:`.statcache`: the stat cache that spares re-reading unchanged files;
* :mod:`.snapshot`: one read of a tree feeding both its digest and the archive that ships;
* :mod:`.archive`: tar for upload;
* :mod:`.tarstream`: the hostile tar streams a container gives back, read under caps;
* :mod:`.extract`: such a stream extracted safely to disk.
"""
