"""TensorFlow Datasets builders for Telugu speech corpora (no TensorFlow needed).

Importing this package registers the builders with TFDS:

| TFDS name         | corpus                                   | download            |
|-------------------|------------------------------------------|---------------------|
| `openslr66_te`    | OpenSLR SLR66 Telugu (CC BY-SA 4.0)      | direct              |
| `mucs_te`         | MUCS 2021 Telugu (Microsoft corpus)      | `manual_dir`        |
| `kathbath_te`     | Kathbath Telugu (CC0)                    | direct (tar, 85 GB) |
| `indicvoices_te`  | IndicVoices Telugu (CC BY 4.0, gated)    | `manual_dir`        |
| `common_voice_te` | Common Voice Telugu (CC0, gated)         | `manual_dir`        |
| `indictts_te`     | IndicTTS Telugu (IIT Madras licence)     | `manual_dir`        |

Build and read without TensorFlow:

  import tensorflow_datasets as tfds
  import telugu_jax.data.tfds_builders  # registers the builders
  builder = tfds.builder("openslr66_te", data_dir="/data/tfds", file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/data/manual/openslr66"))
  train = tfds.data_source("openslr66_te", data_dir="/data/tfds")["train"]
  # `train` feeds telugu_jax.data.pipelines.codec_train_iterator directly.

Each builder's docstring gives the layout it expects and the manual download steps.
"""

from telugu_jax.data.tfds_builders.common_voice import CommonVoiceTe
from telugu_jax.data.tfds_builders.indictts import IndicttsTe
from telugu_jax.data.tfds_builders.indicvoices import IndicvoicesTe
from telugu_jax.data.tfds_builders.kathbath import KathbathTe
from telugu_jax.data.tfds_builders.mucs import MucsTe
from telugu_jax.data.tfds_builders.openslr66 import Openslr66Te

BUILDERS = (Openslr66Te, MucsTe, KathbathTe, IndicvoicesTe, CommonVoiceTe, IndicttsTe)

__all__ = [
    "BUILDERS",
    "CommonVoiceTe",
    "IndicttsTe",
    "IndicvoicesTe",
    "KathbathTe",
    "MucsTe",
    "Openslr66Te",
]
