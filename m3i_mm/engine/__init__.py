from .checkpoint import *  # noqa: F401,F403
from .dataloader import ExitWithParent, SeededDataset  # noqa: F401
from .fully_shard import M3IFullyShardWrapper  # noqa: F401
from .hooks import *  # noqa: F401,F403
from .loops import ResumableEpochBasedTrainLoop  # noqa: F401
from .optimizers import *  # noqa: F401,F403
from .runner import CheckpointMismatchError, M3IRunner  # noqa: F401
