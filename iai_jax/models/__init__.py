"""The IAI network as Flax Linen modules."""

from iai_jax.models.association import Memory, init_memory
from iai_jax.models.iai import (IAI, abstract_variables, build_model,
                                count_params, init_variables, trainable_mask)
from iai_jax.models.rollout import empty_memory
