"""How gradecast's long-running processes set Python's cyclic garbage collector: they hold
tens of thousands of connections, each a dozen objects that live as long as it does."""

import gc

# A young collection after this many new container objects, where CPython's default is
# 700. With the default, a node opening 20,000 streams ran 16 full collections, each one
# scanning every stream opened so far: 2.4 s of CPU in a 14 s ramp, in pauses of up to a few
# hundred milliseconds. What else these processes allocate (a request's objects, a frame's)
# is mostly freed by reference counting long before a collection would look at it.
YOUNG_GENERATION = 50_000


def settle_after_startup() -> None:
    """What exists once a process has started (modules, the app, its pools) lives as long
    as the process: it is frozen out of every later collection."""
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION)
