"""The run layer: one run's life, from a spec to a terminal record, over an engine and a store.

* :mod:`.spec`: :class:`~.spec.RunSpec` (what decides a run) and :class:`~.spec.RunResult`;
* :mod:`.placement`: candidate machines, the run key and the store's placement;
* :mod:`.images`: the image a run needs on its engine, built there when declared as a build;
* :mod:`.dispatch`: hash, prepare, ship, start, follow, collect, end;
* :mod:`.readback` and :mod:`.logs`: what the container gives back, and the log and event spools;
* :mod:`.recovery`: reconcile, watch, cancel, reap and gc;
* :mod:`.balance`: a directory's inner tests split over shards.
"""
