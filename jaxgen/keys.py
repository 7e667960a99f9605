"""Named random keys: every random number of a run derives from its root key by purpose.

One root key comes from ``--seed`` and is stored in the train state. A derived key is the root
folded with the number of its purpose, then with positions such as the epoch (the shuffle) or
the global step (the noise), so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import jax

# fold_in constants naming what a derived key is for.
KEY_PURPOSES = {"init": 0, "shuffle": 1, "noise": 2, "sample": 3}


def named_key(rng: jax.Array, purpose: str, *positions) -> jax.Array:
    """The key for ``purpose`` (one of KEY_PURPOSES), folded with e.g. the epoch or the step."""
    key = jax.random.fold_in(rng, KEY_PURPOSES[purpose])
    for position in positions:
        key = jax.random.fold_in(key, position)
    return key
