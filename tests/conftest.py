"""Shared test setup: CPU JAX, the PyTorch reference importable, small thread counts."""

import importlib.util
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One compilation cache for the session and its subprocesses: tests that build the same small
# models (in this process or in launched training processes) compile them once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="telugu-jax-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Compiling is most of the suite's time, running the tiny programs little: LLVM at -O0 on XLA's
# elemental emitters compiles the codec's training step 3x faster (same HLO; the programs the
# tests compare against references or against each other are built alike). Flags already in
# XLA_FLAGS come after these and win; launched processes inherit them (tests that set a child's
# own flags add them to this XLA_FLAGS).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):  # parallel workers inherit them
  os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
sys.path.insert(0, os.path.dirname(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # `configs` is a folder of the checkout, not an installed package.

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|: one number per tensor, scale-free."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  dtype = np.complex128 if np.iscomplexobj(actual) or np.iscomplexobj(expected) else np.float64
  actual, expected = actual.astype(dtype), expected.astype(dtype)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def load_tool(name: str):
  """`tools/<name>.py` as a module, loaded once per process and registered under `name` (its
  dataclasses look their module up; absl flags may be defined only once)."""
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise
  return sys.modules[name]


def with_overrides(config, **overrides):
  """`config` with dotted-path fields set (`**{"data.batch_size": 8}`), unlocked for it."""
  with config.unlocked():
    for key, value in overrides.items():
      *parents, name = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[name] = value
  return config


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
  try:
    import torch
  except ImportError:
    return
  torch.set_num_threads(max(1, os.cpu_count() or 1))


# The trainers' test files take longest (they launch training processes): collected first, they
# start first on the parallel workers (each test file runs on one) instead of finishing the run
# on their own.
_SLOWEST_FILES = ("test_train_codec.py", "test_train_s2s.py")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _SLOWEST_FILES)
