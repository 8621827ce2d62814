"""The run layer: one run's life, from a spec to a terminal record, over an engine and a store.

* :mod:`.spec`: :class:`~.spec.RunSpec` (what decides a run) and :class:`~.spec.RunResult`;
* :mod:`.placement`: candidate machines, the run key and the store's placement;
* :mod:`.images`: the image a run needs on its engine, built there when declared as a build;
* :mod:`.dispatch`: hash, prepare, ship, start, follow, collect, end;
* :mod:`.slots`: a dispatcher's runs on each machine, and the gate a staged run starts at;
* :mod:`.container`: what a run's container is created with, and stopping many at once;
* :mod:`.verdict`: a run's terminal status from its exit code, or from what went wrong;
* :mod:`.readback` and :mod:`.logs`: what the container gives back, and the log and event spools;
* :mod:`.recovery`: reconcile, watch, cancel and reap;
* :mod:`.gc`: the state directory kept under its size cap, after the sweep of crash leftovers;
* :mod:`.balance`: a directory's inner tests split over shards;
* :mod:`.worker`: ``lrun worker``'s bot, which runs a Remote Execution API service's actions
  in containers.
"""
