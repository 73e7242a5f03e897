"""Download the public BloodMNIST files with checksum verification; say where PBC lives.

  python -m bloodcell_jax.tools.download bloodmnist --size 64 --dest data/
  python -m bloodcell_jax.tools.download pbc

A download streams into `<name>.part` beside the destination and is renamed only once its MD5
matches the published one, so an interrupted or corrupted transfer never leaves a file that
looks complete. A file already present with the right checksum is not fetched again.
"""

import hashlib
import os
import sys
import time
import urllib.error
import urllib.request

from absl import flags

from bloodcell_jax.errors import UserInputError
from bloodcell_jax import cli

ZENODO_RECORD = "https://zenodo.org/records/10519652/files/"
# MedMNIST v2/v3 BloodMNIST files and their published MD5 checksums, by image size.
BLOODMNIST = {
    28: ("bloodmnist.npz", "7053d0359d879ad8a5505303e11de1dc"),
    64: ("bloodmnist_64.npz", "2b94928a2ae4916078ca51e05b6b800b"),
    128: ("bloodmnist_128.npz", "adace1e0ed228fccda1f39692059dd4c"),
    224: ("bloodmnist_224.npz", "b718ff6835fcbdb22ba9eacccd7b2601"),
}
PBC_NOTE = """\
The PBC dataset (17,092 JPGs of 360x363 px, one folder per class, CC BY 4.0) is published on
Mendeley Data: doi:10.17632/snkd93bnjr.1 (https://data.mendeley.com/datasets/snkd93bnjr/1).
Mendeley serves it as a zip behind a web page, not at a stable file address, so download it in a
browser, unzip it, and point data.source at the folder that holds the eight class folders, e.g.
  python main.py --config configs/cpu_small.py --config.data.source=~/PBC_dataset_normal_DIB
Folder names such as 'immature granulocytes' or 'ig' map onto the eight classes automatically."""


class DownloadError(UserInputError):
  """The transfer failed or the file does not match its checksum; nothing was left behind."""


def file_md5(path: str, chunk: int = 1 << 20) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      digest.update(block)
  return digest.hexdigest()


def _fetch_once(url: str, part: str, timeout: float) -> str:
  digest = hashlib.md5()
  received = 0
  with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
    expected = response.headers.get("Content-Length")
    for block in iter(lambda: response.read(1 << 20), b""):
      out.write(block)
      digest.update(block)
      received += len(block)
  if expected is not None and received != int(expected):
    raise DownloadError(f"{url}: connection closed after {received} of {expected} bytes")
  return digest.hexdigest()


def download(url: str, dest: str, md5: str, attempts: int = 3, timeout: float = 60.0,
             retry_wait: float = 2.0) -> str:
  """Fetches `url` to `dest` if it is not already there with checksum `md5`; returns `dest`."""
  if os.path.exists(dest) and file_md5(dest) == md5:
    return dest
  os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
  part = dest + ".part"
  error = None
  for attempt in range(attempts):
    try:
      got = _fetch_once(url, part, timeout)
      if got != md5:
        raise DownloadError(f"{url}: checksum mismatch (MD5 {got}, expected {md5}); file discarded")
      os.replace(part, dest)
      return dest
    except DownloadError as e:
      error = e
    except (urllib.error.URLError, OSError, ValueError) as e:  # http.client errors are OSErrors or ValueErrors
      error = DownloadError(f"{url}: download failed ({e})")
    finally:
      if os.path.exists(part):
        os.remove(part)
    if attempt + 1 < attempts:
      time.sleep(retry_wait * (attempt + 1))
  raise error


DATASETS = ("bloodmnist", "pbc")
FLAGS = flags.FlagValues()  # this tool's own, not absl's global FLAGS (main.py's); see bloodcell_jax/cli.py
flags.DEFINE_integer("size", 64, f"BloodMNIST image size: one of {', '.join(map(str, sorted(BLOODMNIST)))}.",
                     flag_values=FLAGS)
flags.register_validator("size", lambda size: size in BLOODMNIST,
                         f"--size must be one of {', '.join(map(str, sorted(BLOODMNIST)))}", flag_values=FLAGS)
flags.DEFINE_string("dest", "data", "Folder to write into.", flag_values=FLAGS)
flags.DEFINE_string("mirror", ZENODO_RECORD, "Base address to fetch from (default: Zenodo).", flag_values=FLAGS)
flags.DEFINE_integer("attempts", 3, "Tries before giving up.", lower_bound=1, flag_values=FLAGS)


def fetch(dataset: str) -> None:
  """The command: BloodMNIST at --size into --dest, or where to get PBC."""
  if dataset not in DATASETS:
    raise UserInputError(f"{dataset}: unknown dataset; choose one of {', '.join(DATASETS)}")
  if dataset == "pbc":
    print(PBC_NOTE)
    return
  name, md5 = BLOODMNIST[FLAGS.size]
  dest = os.path.join(FLAGS.dest, name)
  download(FLAGS.mirror.rstrip("/") + "/" + name + "?download=1", dest, md5, attempts=FLAGS.attempts)
  print(f"{dest}: OK (MD5 {md5})")


def main(argv=None) -> int:
  return cli.run("python -m bloodcell_jax.tools.download", __doc__, FLAGS, argv, fetch, positionals=("DATASET",))


if __name__ == "__main__":
  sys.exit(main())
