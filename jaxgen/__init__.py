"""jaxgen: generative models on MNIST-like images in JAX/Flax (linen), data-parallel, checkpointed,
measured. See README.md; the training core is ``jaxgen.train.loop``."""

__version__ = "0.1.0"
