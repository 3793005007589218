"""Path and graph experiments, one module per job.

``paths`` (:func:`run_paths`, the module of a space's pairs), ``graph`` (:func:`run_graph`, its
rounds), ``pairs`` (which pairs a path run connects), ``inputs`` (which inputs a graph run
joins), ``sampling`` (the draw checks both share), ``networks`` (the run's own copy of a
classifier), ``takeover`` (which saved band state a resumed rank continues), ``trainer`` (the
Trainer's settings and one fit of a module's pairs).
"""
