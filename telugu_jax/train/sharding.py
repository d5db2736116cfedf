"""Device mesh and data-parallel placement (no pmap).

One mesh axis, `data`, over every device of every host. Batches are global arrays assembled from
each host's process-local rows; the training state is replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`."""
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(mesh: Mesh, local_batch: Any) -> Any:
  """Assembles each host's rows (numpy, leading axis) into global arrays sharded over `data`."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def local_batch_size(global_batch_size: int) -> int:
  """Rows this host feeds; the global batch must split evenly over devices."""
  if global_batch_size % jax.device_count():
    raise ValueError(f"batch size {global_batch_size} does not split over "
                     f"{jax.device_count()} devices")
  return global_batch_size // jax.process_count()
