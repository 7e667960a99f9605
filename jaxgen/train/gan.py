"""The GAN as the training loop sees it: :class:`GANTask`, for every variant of the collection.

A variant is a :class:`~jaxgen.train.gan_objective.Objective` with its config
(``jaxgen.train.gan_objective``; registered by name in ``jaxgen.train.gan_variants``). The task
holds G and D (their modules, optimisers and the model pytree), draws each step's z and codes,
takes the step assembled from parts by ``jaxgen.train.gan_step`` (with the same z, one Adam
step of D on the D loss, then, on every ``n_critic``-th step of an epoch, one of G on the G loss
through the updated D; both networks in training mode throughout, as in the reference), and
draws the samples and the per-epoch grids. ``--g-ema DECAY`` (every GAN) keeps an exponential
moving average of G's weights, which samples, grids and evaluations then use
(``jaxgen.train.gan_ema``). ``tests/test_gan_step.py`` checks the step against a plain
transcription of the reference's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct, traverse_util
from jax.tree_util import GetAttrKey

from jaxgen import parallel
from jaxgen.errors import JaxgenError
from jaxgen.keys import named_key
from jaxgen.models.gan import Generator
from jaxgen.models.layers import BATCHNORM_MOMENTUM
from jaxgen.train import gan_ema
from jaxgen.train.gan_objective import DTYPES, VANILLA, GANConfig, LossContext, Objective
from jaxgen.train.gan_step import StepHook, condition_kwargs, make_step
from jaxgen.train.task import Picture, Task

SAMPLE_GRID = 64  # fixed-noise samples drawn after every epoch (an 8x8 grid)
STANDING_SAMPLES = 4096  # G's inputs whose batch statistics the moving average samples with


class Network(struct.PyTreeNode):
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self, params=None, batch_stats=None) -> dict:
        return {"params": self.params if params is None else params,
                "batch_stats": self.batch_stats if batch_stats is None else batch_stats}


@jax.tree_util.register_pytree_with_keys_class
@dataclasses.dataclass(frozen=True)
class GANModel:
    """Every GAN's model: G, D, and the state a variant keeps beside them (BEGAN's k, a critic's
    last G loss, infoGAN's third optimiser state, the moving average of G's weights), empty for
    the vanilla GAN. As a pytree, an empty ``extra`` is left out, so a GAN without state of its
    own has the layout its checkpoints always had: G and D alone."""

    g: Network
    d: Network
    extra: dict = dataclasses.field(default_factory=dict)

    def replace(self, **changes) -> "GANModel":
        return dataclasses.replace(self, **changes)

    def tree_flatten_with_keys(self):
        children = [(GetAttrKey("g"), self.g), (GetAttrKey("d"), self.d)]
        if self.extra:
            children.append((GetAttrKey("extra"), self.extra))
        return children, bool(self.extra)

    @classmethod
    def tree_unflatten(cls, has_extra: bool, children) -> "GANModel":
        return cls(*children) if has_extra else cls(*children, extra={})


def uniform_batchnorm_scales(params: Any, key: jax.Array) -> Any:
    """``params`` with the scale of every BatchNorm layer redrawn from U[0, 1), as PyTorch up
    to 0.4 initialised them (``weight.data.uniform_()``; ones since 1.0). A layer is a BatchNorm
    when its name starts with "BatchNorm"; each layer's draw has its own key."""
    flat = traverse_util.flatten_dict(params)
    for i, path in enumerate(sorted(flat)):
        if path[-1] == "scale" and path[-2].startswith("BatchNorm"):
            flat[path] = jax.random.uniform(jax.random.fold_in(key, i), flat[path].shape,
                                            flat[path].dtype)
    return traverse_util.unflatten_dict(flat)


class GANTask(Task):
    """A GAN as the training loop sees it; ``objective`` says which (the vanilla GAN here;
    ``jaxgen.train.gan_variants.task_class(name)`` gives the others)."""

    objective: Objective = VANILLA
    name = VANILLA.name
    config_class = GANConfig

    def __init__(self, config: GANConfig):
        self.config = config
        objective = self.objective
        self.metric_names = ("D_loss", "G_loss") + objective.extra_metrics
        forms, dtype = config.conv_forms, DTYPES[config.dtype]  # auto: resolved when traced
        self.generator = Generator(conv_forms=forms, dtype=dtype, width=config.width)
        self.discriminator = objective.discriminator(conv_forms=forms, dtype=dtype,
                                                     width=config.width)
        self.tx_d = objective.optimizer(config.lr_d, config)
        self.tx_g = objective.optimizer(config.lr_g, config)
        # infoGAN's third optimiser, over G's and D's parameters, at D's learning rate.
        self.tx_info = (None if objective.info_loss is None
                        else objective.optimizer(config.lr_d, config))
        if objective.info_loss is not None and self.needs_step_in_epoch:
            raise ValueError(f"{objective.name}: an information loss needs n_critic 1")
        # After each step: the objective's hook, then the moving average of G's weights.
        self.step_hooks: tuple[StepHook, ...] = tuple(
            [objective.after_step] if objective.after_step else []) + tuple(
            [gan_ema.step_hook(config.g_ema)] if config.g_ema else [])
        self._step = make_step(self)
        self._generate_fixed = jax.jit(lambda g, rng: self.generate(g, self.fixed_noise(rng)))
        self._generate = jax.jit(self.generate)
        self._standing = jax.jit(self.standing_statistics)

    @property
    def needs_step_in_epoch(self) -> bool:
        """A critic that takes n_critic > 1 steps per G step counts the steps of an epoch."""
        n_critic = self.objective.n_critic
        return n_critic is not None and n_critic(self.config) > 1

    @property
    def needs_labels(self) -> bool:
        """A GAN conditioned on the real batch's labels (CGAN, ACGAN, a supervised infoGAN)."""
        codes = self.objective.codes
        return codes is not None and codes.from_data(self.config)

    @property
    def conditional_classes(self) -> int:
        """How many categories a sample can be asked for (0: an unconditional GAN)."""
        return 0 if self.objective.codes is None else self.objective.codes.num_classes

    # ---------------------------------------------------------------- pieces
    def sample_prior(self, key: jax.Array, num: int) -> jax.Array:
        shape = (num, self.config.z_dim)
        if self.config.prior == "uniform":
            return jax.random.uniform(key, shape)
        return jax.random.normal(key, shape)

    def g_input(self, z: jax.Array, labels: Optional[jax.Array] = None,
                continuous: Optional[jax.Array] = None) -> jax.Array:
        """What G is fed: z, then a conditional GAN's codes (continuous, then the one-hot
        category of ``labels``)."""
        codes = self.objective.codes
        if codes is None:
            return z
        parts = [z] + ([continuous] if codes.continuous else [])
        parts.append(jax.nn.one_hot(labels, codes.num_classes, dtype=z.dtype))
        return jnp.concatenate(parts, axis=-1)

    def draw_codes(self, key: jax.Array, num: int, labels: Optional[jax.Array] = None):
        """A conditional GAN's (categories (num,) int32, continuous codes (num, n) U(-1, 1), or
        None without any): ``labels`` when given, else categories drawn uniformly."""
        codes = self.objective.codes
        cat_key, cont_key = jax.random.split(key)
        if labels is None:
            labels = jax.random.randint(cat_key, (num,), 0, codes.num_classes)
        continuous = (jax.random.uniform(cont_key, (num, codes.continuous), minval=-1.0,
                                         maxval=1.0) if codes.continuous else None)
        return jnp.asarray(labels, jnp.int32), continuous

    def init(self, key: jax.Array) -> GANModel:
        g_key, d_key = jax.random.split(key)
        codes = self.objective.codes
        g_in = self.config.z_dim + (0 if codes is None else codes.size)
        g_vars = self.generator.init(g_key, jnp.zeros((1, g_in)), train=False)
        condition = (jnp.zeros((1, codes.num_classes)) if self.objective.condition_d else None)
        d_vars = self.discriminator.init(d_key, jnp.zeros((1, 28, 28, 1)), train=False,
                                         **condition_kwargs(condition))
        g_params, d_params = g_vars["params"], d_vars["params"]
        if self.config.batchnorm_scale_init == "uniform":
            g_scale_key, d_scale_key = jax.random.split(jax.random.fold_in(key, 1))
            g_params = uniform_batchnorm_scales(g_params, g_scale_key)
            d_params = uniform_batchnorm_scales(d_params, d_scale_key)
        g = Network(g_params, g_vars["batch_stats"], self.tx_g.init(g_params))
        d = Network(d_params, d_vars.get("batch_stats", {}), self.tx_d.init(d_params))
        model = GANModel(g=g, d=d)
        extra = ({} if self.objective.init_extra is None
                 else self.objective.init_extra(self.config, model))
        if self.objective.n_critic is not None:  # the last G step's loss, shown while G waits
            extra["g_loss"] = jnp.zeros((), jnp.float32)
        if self.tx_info is not None:
            extra["info_opt"] = self.tx_info.init((g.params, d.params))
        if self.config.g_ema:
            extra.update(gan_ema.init(g.params))
        return GANModel(g=g, d=d, extra=extra)

    def sampling_network(self, model: GANModel) -> Network:
        """The G that samples: where the run keeps one (``--g-ema``), the moving average of G's
        weights with BatchNorm statistics of its own (:meth:`standing_statistics`), else G."""
        if "g_ema" in model.extra:
            return self._standing(model.g.replace(params=model.extra["g_ema"]))
        return model.g

    def sampling_model(self, model: GANModel) -> GANModel:
        """``model`` with :meth:`sampling_network` as its G, drawn from as is."""
        if "g_ema" not in model.extra:
            return model
        return GANModel(g=self.sampling_network(model), d=model.d, extra={})

    def standing_statistics(self, g: Network) -> Network:
        """``g`` with BatchNorm running statistics that belong to its weights: G's batch
        statistics in training mode on ``STANDING_SAMPLES`` draws of its inputs from a fixed key.
        The moving average's weights need them: beside the live G's statistics its samples lose
        most of their quality (docs/gan-results.md, the collection)."""
        inputs = parallel.spread_batch(self.sample_inputs(jax.random.PRNGKey(0),
                                                          STANDING_SAMPLES))
        zeros = jax.tree.map(jnp.zeros_like, g.batch_stats)
        _, changed = self.generator.apply({"params": g.params, "batch_stats": zeros}, inputs,
                                          train=True, mutable=["batch_stats"])
        # One training-mode pass from zero leaves running = (1 - momentum) * batch statistics.
        return g.replace(batch_stats=jax.tree.map(lambda s: s / (1 - BATCHNORM_MOMENTUM),
                                                  changed["batch_stats"]))

    def generate(self, g: Network, z: jax.Array) -> jax.Array:
        """G in inference mode (BatchNorm running averages) on its inputs ``z`` (with a
        conditional GAN's codes: :meth:`g_input`): images in [-1, 1]."""
        images = self.generator.apply(g.variables(), parallel.spread_batch(z), train=False)
        return parallel.gather_batch(images)

    def sample_images(self, model: GANModel, key: jax.Array, num: int,
                      labels: Optional[jax.Array] = None) -> jax.Array:
        """``num`` samples; a conditional GAN draws category ``labels[i]`` for sample i (uniform
        categories without ``labels``)."""
        return self.generate(self.sampling_network(model), self.sample_inputs(key, num, labels))

    def sample_inputs(self, key: jax.Array, num: int,
                      labels: Optional[jax.Array] = None) -> jax.Array:
        """G's inputs for ``num`` samples: z, with a conditional GAN's codes (category
        ``labels[i]`` for sample i, uniform categories without ``labels``)."""
        z = self.sample_prior(key, num)
        if self.objective.codes is None:
            if labels is not None:
                raise JaxgenError(f"{self.name} is not a conditional GAN: its samples cannot be "
                                  "asked for a label.")
            return z
        labels, continuous = self.draw_codes(jax.random.fold_in(key, 1), num, labels)
        return self.g_input(z, labels, continuous)

    # ---------------------------------------------------------------- step
    def step_inputs(self, images: jax.Array, key: jax.Array,
                    labels: Optional[jax.Array] = None):
        """What one step draws: (G's inputs, the codes (categories, continuous codes) or (None,
        None), D's condition (CGAN's one-hot categories) or None)."""
        z = parallel.shard_batch(self.sample_prior(key, images.shape[0]))
        codes = self.objective.codes
        if codes is None:
            return z, (None, None), None
        categories, continuous = self.draw_codes(jax.random.fold_in(key, 2), images.shape[0],
                                                 labels)
        categories = parallel.shard_batch(categories)
        if continuous is not None:
            continuous = parallel.shard_batch(continuous)
        condition = (jax.nn.one_hot(categories, codes.num_classes)
                     if self.objective.condition_d else None)
        return self.g_input(z, categories, continuous), (categories, continuous), condition

    def loss_context(self, real: jax.Array, fake: jax.Array, extra, codes) -> LossContext:
        return LossContext(real, fake, extra, self.config, *codes)

    def train_step(self, model: GANModel, images: jax.Array, key: jax.Array,
                   step_in_epoch: Optional[jax.Array] = None,
                   labels: Optional[jax.Array] = None):
        """One step (``jaxgen.train.gan_step.make_step``)."""
        return self._step(model, images, key, step_in_epoch=step_in_epoch, labels=labels)

    def update_after_epoch(self, model: GANModel, metrics: dict) -> tuple[GANModel, list]:
        if self.objective.after_epoch is None:
            return model, []
        return self.objective.after_epoch(model, metrics, self.config)

    # ---------------------------------------------------------------- pictures
    def fixed_noise(self, rng: jax.Array) -> jax.Array:
        """G's inputs of the grid drawn after every epoch, from the run's key: 64 draws of z (an
        8x8 grid); for a conditional GAN the reference's 10x10 grid, row i one fixed z, column j
        category j (continuous codes 0)."""
        if self.objective.codes is None:
            return self.sample_prior(named_key(rng, "sample"), SAMPLE_GRID)
        n = self.objective.codes.num_classes
        z = jnp.repeat(self.sample_prior(named_key(rng, "sample"), n), n, axis=0)
        continuous = jnp.zeros((n * n, self.objective.codes.continuous))
        return self.g_input(z, jnp.tile(jnp.arange(n), n), continuous)

    def code_sweeps(self, key: jax.Array) -> dict[str, jax.Array]:
        """G's inputs that sweep each continuous code from -1 to 1 (columns), the others at 0,
        for every category (rows), with one z drawn from ``key``: ``{"code 1": (n*10, in), ...}``.
        Empty for a GAN without continuous codes."""
        codes = self.objective.codes
        if codes is None or not codes.continuous:
            return {}
        n, steps = codes.num_classes, 10
        z = jnp.broadcast_to(self.sample_prior(key, 1), (n * steps, self.config.z_dim))
        categories = jnp.repeat(jnp.arange(n), steps)
        values = jnp.tile(jnp.linspace(-1.0, 1.0, steps), n)
        sweeps = {}
        for k in range(codes.continuous):
            continuous = jnp.zeros((n * steps, codes.continuous)).at[:, k].set(values)
            sweeps[f"code {k + 1}"] = self.g_input(z, categories, continuous)
        return sweeps

    def pictures(self, model: GANModel, rng: jax.Array) -> dict[str, Picture]:
        """The fixed-noise samples (infoGAN's: one column per category)."""
        ncols = 8 if self.objective.codes is None else self.objective.codes.num_classes
        return {"": Picture(self._generate_fixed(self.sampling_network(model), rng), ncols)}

    def final_pictures(self, model: GANModel, rng: jax.Array) -> dict[str, Picture]:
        """infoGAN: each continuous code's sweep (``infoGAN_code1.png``, ...)."""
        g = self.sampling_network(model)
        return {name.replace(" ", ""): Picture(self._generate(g, inputs), ncols=10)
                for name, inputs in self.code_sweeps(named_key(rng, "sample", 2)).items()}
