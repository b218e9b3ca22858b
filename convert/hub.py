"""Checkpoints named by Hugging Face repo id, read from the local Hugging Face cache only.

    load_backbone('facebook/dinov2-large')            # the cached snapshot of the main branch
    load_backbone('facebook/dinov2-large@<commit>')   # a revision: branch, tag or commit

The cache is huggingface_hub's (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
~/.cache/huggingface/hub), looked up with `local_files_only=True`: nothing is downloaded.
"""
import pathlib
import re

from convert.common import CheckpointError

REPO_ID = re.compile(r'(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(@(?P<revision>[\w./-]+))?')


def resolve(source) -> pathlib.Path:
  """`source` as a local path: itself when it exists or is not a repo id, else the cached snapshot."""
  path = pathlib.Path(source)
  match = REPO_ID.fullmatch(str(source))
  if path.exists() or match is None:
    return path
  try:
    import huggingface_hub
    from huggingface_hub import constants, errors
  except ImportError as e:
    raise CheckpointError(f'{source}: no such file or directory; to read it as a repo id from the Hugging Face '
                          "cache, install huggingface_hub (pip install 'stitchjax[hub]')") from e
  repo, revision = match['repo'], match['revision']
  try:
    return pathlib.Path(huggingface_hub.snapshot_download(repo, revision=revision, local_files_only=True))
  except errors.LocalEntryNotFoundError as e:
    looked = pathlib.Path(constants.HF_HUB_CACHE) / f'models--{repo.replace("/", "--")}'
    raise CheckpointError(
        f'{source}: no such file or directory, and not in the Hugging Face cache (looked in {looked}'
        f'{"" if revision is None else f" for revision {revision}"}). stitchjax downloads nothing: fetch it '
        f'where there is internet (huggingface-cli download {repo}), or give a local path') from e
