"""The IAI network as Flax Linen modules."""

from iai_jax.models.association import Memory, init_memory
from iai_jax.models.iai import (IAI, build_model, count_params, empty_memory, init_variables,
                                abstract_variables, normalize_images,
                                trainable_mask)
