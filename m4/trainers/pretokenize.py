"""The `pretokenize` job: token shards of a dataset (see m4.tools.pretokenize).

    python -m m4.main --config=configs/pretokenize/scenes.py --workdir=DIR
"""

from m4.tools.pretokenize import run  # pylint: disable=unused-import
